//! The ticket acceptor ([`ACCEPTOR_SERVICE`]): anyone with a channel redeems a ticket's
//! one-time code, becomes a member (committed in the store, at most as many as the ticket's
//! usage count, however many redeem it at once) and gets its first credential. Each kind of
//! refusal says what to do; the code is never echoed or logged. A code no ticket has counts
//! as a guess against the caller's identity and address (`throttle`): past a few, the
//! caller must wait before it tries again.
//!
//! [`ACCEPTOR_SERVICE`]: crate::api::ACCEPTOR_SERVICE

use kith_identity::{Identifier, hex};
use tracing::{info, warn};

use super::answer::{bad_request, store_failed};
use super::join::ChannelSeen;
use super::state::Authority;
use super::throttle::GuessKind;
use crate::api::{ApiError, Enrolled, ErrorKind};
use crate::store::RedeemError;
use crate::ticket::{CODE_LEN, OneTimeCode};

/// The one-time code in a redeem request: exactly 64 hex digits. Never echoed or logged.
fn parse_code(text: &str) -> Result<OneTimeCode, ApiError> {
    let refusal = || {
        bad_request(format!(
            "the one-time code must be {} hex digits",
            CODE_LEN * 2
        ))
    };
    if text.len() != CODE_LEN * 2 {
        return Err(refusal());
    }
    let bytes = hex::decode(text).map_err(|_| refusal())?;
    let bytes: [u8; CODE_LEN] = bytes.try_into().map_err(|_| refusal())?;
    Ok(OneTimeCode::from_bytes(bytes))
}

/// The peer's answer to a refused redemption: a kind and message per reason; store failures
/// are logged and answered coarsely.
fn redeem_refusal(error: &RedeemError) -> ApiError {
    match error {
        RedeemError::Unknown => ApiError::new(
            ErrorKind::TicketUnknown,
            "this ticket is not known to the authority; check that it was copied whole and is for this project",
        ),
        RedeemError::Expired { expires_at } => ApiError::new(
            ErrorKind::TicketExpired,
            format!(
                "this ticket has expired (at Unix time {expires_at}); ask an admin for a new one"
            ),
        ),
        RedeemError::Revoked { .. } => ApiError::new(
            ErrorKind::TicketRevoked,
            "this ticket has been revoked; ask an admin for a new one",
        ),
        RedeemError::UsedUp { .. } => ApiError::new(
            ErrorKind::TicketUsedUp,
            "this ticket has been used up: it has enrolled as many identities as it may; ask an admin for a new one",
        ),
        RedeemError::Store(e) => store_failed("redeeming a ticket", e),
    }
}

impl Authority {
    /// Redeem a one-time code: the caller becomes a member (committed in the store) and gets
    /// its first credential. A caller that is a member already gets the ticket's attributes
    /// added to its own, or, with `replace`, instead of them; the answer says what it had
    /// before. A caller repeating a redemption whose answer it lost gets its credential again
    /// without spending another use.
    ///
    /// A code no ticket has is a failed guess by the caller's identity and by the address
    /// `channel` came from; while either must wait, the redemption is refused at once
    /// ([`ErrorKind::Throttled`]). Expired, revoked and used-up tickets are not guesses.
    pub(super) async fn redeem(
        &self,
        caller: &Identifier,
        channel: &ChannelSeen,
        code: &str,
        replace: bool,
    ) -> Result<Enrolled, ApiError> {
        let code = parse_code(code)?;
        let attempt = self
            .admit_guess(GuessKind::Redeem, caller, channel.source)
            .await?;
        let now = self.now();
        // The key first: once the ticket is used, nothing that can fail for want of a key
        // stands between the member and its credential.
        let key = self.signing_key(now).await?;
        let redeemed = match self
            .shared
            .store
            .redeem_ticket(&code.hash(), caller, replace, now)
            .await
        {
            Ok(redeemed) => redeemed,
            Err(e) => {
                if matches!(e, RedeemError::Unknown) {
                    attempt.failed().await;
                }
                return Err(redeem_refusal(&e));
            }
        };
        drop(attempt);
        if self.shared.abort_after_enroll_commit {
            // The test hook (`ABORT_AFTER_ENROLL_COMMIT`): a crash between commit and answer.
            warn!("test hook: aborting after a redemption committed, before answering");
            std::process::abort();
        }
        info!(
            ticket = %redeemed.ticket_id,
            retried = redeemed.retried,
            was_member = redeemed.before.is_some(),
            "ticket redeemed; the caller is a member"
        );
        if redeemed.before.is_some() {
            // A member's attributes may have changed: its earlier credentials are void.
            self.shared.feed.poke();
        }
        let mut enrolled = self.issue(
            &key,
            caller,
            redeemed.attributes,
            None,
            redeemed.changed_at,
            now,
        )?;
        enrolled.before = redeemed.before;
        enrolled.retried = redeemed.retried;
        Ok(enrolled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_64_hex_digits_and_never_echoed() {
        let code = OneTimeCode::random();
        let text = hex::encode(code.as_bytes());
        assert_eq!(parse_code(&text).unwrap(), code);
        assert_eq!(parse_code(&text.to_uppercase()).unwrap(), code);
        for bad in [
            &text[..63],
            &format!("{text}0"),
            &format!("{}g", &text[..63]),
            "é",
        ] {
            let refusal = parse_code(bad).unwrap_err();
            assert_eq!(refusal.kind, ErrorKind::BadRequest);
            assert!(!refusal.message.contains(&text[..16]));
        }
    }
}
