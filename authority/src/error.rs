//! The authority crate's errors, one enum per surface a caller reacts to: starting the
//! services, relay names, the membership store (and the three refusals its writes can end
//! in), enrollment tickets, project descriptions, and the client's calls and join waits.
//!
//! Messages name what failed with its values and, where the reader can act, what to do.
//! None carries a secret: no one-time code, no hash of one, no password of a database URL.
//! Errors sent to a peer are not these: the services answer with a coarse
//! [`ApiError`](crate::api::ApiError) and log these in full.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kith_identity::secure_channel::{ChannelEnded, SecureChannelError};
use kith_identity::{CredentialError, DecodeError, Identifier, IdentifierError, IdentityError};
use kith_node::{RequestError, RouteError, StartError};
use kith_transport::MultiAddrError;
use sqlx::migrate::MigrateError;

use crate::api::{ApiError, ErrorKind, JoinRequestInfo};
use crate::project::{ID_LEN, JSON_VERSION, MAX_NAME_LEN};
use crate::relay::MAX_RELAY_NAME;
use crate::store::JoinState;
use crate::ticket::VERSION;

/// Why [`Authority::start`] did not start the services.
///
/// [`Authority::start`]: crate::service::Authority::start
#[derive(Debug, thiserror::Error)]
pub enum StartServicesError {
    /// The configured project id cannot be a credential attribute's value.
    #[error("the project id cannot be put in credentials; use a project id from `kith project`")]
    ProjectId(#[source] CredentialError),
    /// The configured credential lifetime is under a second.
    #[error("the credential lifetime is {ttl:?}; give credentials at least 1s of validity")]
    CredentialTtl {
        /// The lifetime configured.
        ttl: Duration,
    },
    /// A service's worker could not be started (its address is taken, or the node is
    /// shutting down). Services started before it are stopped again.
    #[error("cannot start the authority's {service} service")]
    Start {
        /// The service's address.
        service: &'static str,
        /// What the node said.
        #[source]
        source: StartError,
    },
}

/// Why a relay name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayNameError {
    /// The empty string.
    #[error(
        "the relay name is empty; give one of 1 to {MAX_RELAY_NAME} letters, digits, '-', '_' or '.'"
    )]
    Empty,
    /// Longer than [`MAX_RELAY_NAME`].
    #[error("the relay name is {len} bytes long; the most is {MAX_RELAY_NAME}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `A-Z a-z 0-9 - _ .`, or a leading `.`.
    #[error(
        "the relay name has {character:?} at position {position}; use letters, digits, '-', '_' and '.' (not first)"
    )]
    Character {
        /// The character, shown escaped.
        character: char,
        /// Its position, counting characters from 1.
        position: usize,
    },
}

/// Why a membership store operation failed. Messages name the store (a file path, or a
/// PostgreSQL user, host and database — never a password) and never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The PostgreSQL URL does not parse.
    #[error(
        "invalid PostgreSQL URL for the membership store; write postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    InvalidUrl {
        /// What the URL parser reported (it does not repeat the URL).
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be reached.
    #[error(
        "cannot connect to the membership store ({store}): {reason}; check that the server runs at that host and port"
    )]
    Connect {
        /// The store, without password.
        store: String,
        /// What the driver reported, once.
        reason: String,
    },
    /// The server runs, but the database the URL names does not exist.
    #[error(
        "the membership store's database does not exist ({store}); create it first, e.g. `{create}`, or as a role allowed to: CREATE DATABASE {database};"
    )]
    NoDatabase {
        /// The store, without password.
        store: String,
        /// The database's name.
        database: String,
        /// A command that creates it.
        create: String,
    },
    /// The server refused the URL's user (a wrong password, or a role it does not admit).
    #[error(
        "PostgreSQL refused to log in as {user} ({store}): {reason}; check the URL's user and password"
    )]
    LoginRefused {
        /// The store, without password.
        store: String,
        /// The role.
        user: String,
        /// What the server said.
        reason: String,
    },
    /// Creating the SQLite file or restricting its permissions failed.
    #[error(
        "cannot create the membership store file {path} or make it readable by its owner only; check that its directory exists and belongs to you"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the SQLite file, to see what it holds before it is opened, failed.
    #[error(
        "cannot read the membership store file {path}; check that it is a file and belongs to you"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Opening an existing project's store found no project there: no file, an empty one,
    /// a database without kith's tables, or kith's tables with no project stamp and no
    /// data (DESIGN §5: an authority refuses an empty store). Nothing was changed: no file
    /// created, no table, no stamp.
    #[error(
        "the membership store ({store}) holds no kith project: {found}. To start a new project, run `kith authority create NAME --project NAME` (with --database-url for PostgreSQL); to go on with an existing project, restore its store file from a backup, or point --database-url at its database"
    )]
    NoProject {
        /// The store.
        store: String,
        /// What is there instead, e.g. `there is no such file`.
        found: String,
    },
    /// The store is stamped with another project than the one it was opened for (DESIGN
    /// §5: an authority refuses a foreign store). Nothing was changed.
    #[error(
        "the membership store ({store}) belongs to project {found} (stamped at Unix time {stamped_at}), not to project {expected}, which this authority serves; give this authority project {expected}'s store back (its file from a backup, or its database with --database-url), or run an authority of project {found} on this one"
    )]
    ForeignProject {
        /// The store.
        store: String,
        /// The project id it is stamped with.
        found: String,
        /// When it was stamped, Unix seconds.
        stamped_at: u64,
        /// The project id it was opened for.
        expected: String,
    },
    /// What is at the store's location is not a kith store that can be read: not a SQLite
    /// database, a table that cannot be read, some of kith's tables missing. Nothing was
    /// changed.
    #[error(
        "the membership store ({store}) is damaged or unreadable: {what}; restore it from a backup, or move it away and run `kith authority create NAME --project NAME` to start a new project"
    )]
    Damaged {
        /// The store.
        store: String,
        /// What is wrong.
        what: String,
        /// The database's or decoder's error, where there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// Creating a new project's store found something at its location already: a
    /// project's store, data, or something that is not a kith store. Nothing was changed.
    #[error(
        "cannot create a new project's membership store in {store}: it already holds {found}. Give the new project an empty database or a new file; to run another authority of an existing project on its shared PostgreSQL database, pass that project's --project-id"
    )]
    Occupied {
        /// The store.
        store: String,
        /// What is there, e.g. `the store of project 0123… (stamped at Unix time …)`.
        found: String,
    },
    /// The store's tables could not be created or brought up to date.
    #[error("cannot prepare the tables of the membership store ({store}); {hint}")]
    Migrate {
        /// The store.
        store: String,
        /// What to do about it, from what went wrong.
        hint: &'static str,
        /// What the migrator reported.
        #[source]
        source: MigrateError,
    },
    /// The database stayed busy (locked, or in conflict with other writers) for longer than
    /// the store retries.
    #[error(
        "the membership store ({store}) stayed busy for {waited:?}; another authority process is probably writing a lot, so try again"
    )]
    Busy {
        /// The store.
        store: String,
        /// How long the operation waited and retried.
        waited: Duration,
        /// The last busy or conflict error.
        #[source]
        source: sqlx::Error,
    },
    /// Any other database error.
    #[error("the membership store ({store}) failed")]
    Database {
        /// The store.
        store: String,
        /// What the database or driver reported.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row does not decode: the database was damaged or edited by hand.
    #[error(
        "the membership store ({store}) holds a corrupt {what}; correct or delete that row, or restore the store from a backup"
    )]
    Corrupt {
        /// The store.
        store: String,
        /// What is corrupt and how.
        what: String,
        /// The decoding error, where there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// A ticket with this id (or, impossibly for random codes, this code) exists already.
    #[error("a ticket with id {id:?} exists already; create the ticket again with a new id")]
    TicketExists {
        /// The id asked for.
        id: String,
    },
    /// The ticket to create is not acceptable.
    #[error("cannot store ticket {id:?}: {reason}")]
    InvalidTicket {
        /// The id asked for (at most 80 characters of it).
        id: String,
        /// What is wrong, and what to use instead.
        reason: String,
    },
}

/// Why a ticket's code did not enroll anyone. Each refusal names a different thing to do;
/// none reveals whether other tickets exist.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No ticket has this code.
    #[error(
        "this enrollment ticket is not known to the authority; check that it was copied whole and is for this project, or ask an admin for a new one"
    )]
    Unknown,
    /// The ticket has expired.
    #[error("this enrollment ticket expired at Unix time {expires_at}; ask an admin for a new one")]
    Expired {
        /// When it expired, Unix seconds.
        expires_at: u64,
    },
    /// An admin revoked the ticket.
    #[error("this enrollment ticket was revoked at Unix time {at}; ask an admin for a new one")]
    Revoked {
        /// When it was revoked, Unix seconds.
        at: u64,
    },
    /// The ticket has enrolled as many identities as it may.
    #[error(
        "this enrollment ticket has been used up: it could enroll {usage_count} {}; ask an admin for a new one",
        if *usage_count == 1 { "identity" } else { "identities" }
    )]
    UsedUp {
        /// How many identities it could enroll in all.
        usage_count: u32,
    },
    /// The store failed; the ticket was not used.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a join request was not filed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Too many pending requests from this source.
    #[error(
        "{pending} join requests from {source_address} are pending already; at most {max} may be"
    )]
    PerSource {
        /// The source.
        source_address: String,
        /// How many are pending.
        pending: u32,
        /// The cap.
        max: u32,
    },
    /// Too many pending requests in all.
    #[error("{pending} join requests are pending already; at most {max} may be")]
    Total {
        /// How many are pending.
        pending: u32,
        /// The cap.
        max: u32,
    },
    /// A request with this id exists already (pick another id).
    #[error("a join request with id {id:?} exists already")]
    IdTaken {
        /// The id.
        id: String,
    },
    /// The store failed; nothing was filed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a join request was not approved or denied. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// No request has this id.
    #[error("there is no join request with this id")]
    NotFound,
    /// It was decided already (or marked expired).
    #[error("this join request is {} already", .state.as_str())]
    Closed {
        /// Where it stands.
        state: JoinState,
    },
    /// It expired undecided.
    #[error("this join request expired at Unix time {expires_at}")]
    Expired {
        /// When.
        expires_at: u64,
    },
    /// Its code is no longer the one given: it was filed again meanwhile.
    #[error("this join request was filed again since; look at its new verification code")]
    CodeChanged,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why text or bytes are not a ticket. No variant carries the one-time code.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// Nothing, or only whitespace.
    #[error(
        "the ticket is empty; pass the whole ticket as an argument, with --ticket-file, or in KITH_ENROLLMENT_TICKET"
    )]
    Empty,
    /// Longer than [`MAX_TICKET_LEN`](crate::ticket::MAX_TICKET_LEN); not decoded.
    #[error("the ticket is {len} bytes long; the most accepted is {max}")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Whitespace between the ticket's first and last characters.
    #[error(
        "the ticket has whitespace ({character:?}) at character {position}; it was probably wrapped across lines: join it into one line"
    )]
    Whitespace {
        /// The whitespace character.
        character: char,
        /// Its 1-based position in the ticket (after surrounding whitespace is removed).
        position: usize,
    },
    /// A character that is neither base64url nor hex.
    #[error(
        "the ticket has {character:?} at character {position}, which is neither base64url (A-Z a-z 0-9 - _) nor hex; was it copied whole?"
    )]
    InvalidCharacter {
        /// The character.
        character: char,
        /// Its 1-based position in the ticket (after surrounding whitespace is removed).
        position: usize,
    },
    /// A hex ticket with an odd number of digits.
    #[error("the hex ticket has an odd number of digits ({len}); it was probably cut short")]
    OddHexLength {
        /// Its length in digits.
        len: usize,
    },
    /// base64url characters that do not decode (a length no encoding produces, or stray bits
    /// at the end).
    #[error("the ticket is not valid base64url; it was probably cut short or altered")]
    Base64(#[source] base64::DecodeError),
    /// Too short to hold a version byte and a checksum.
    #[error("the ticket is only {len} bytes; it was probably cut short")]
    Truncated {
        /// Its length in bytes.
        len: usize,
    },
    /// A binary form version this kith does not read.
    #[error(
        "ticket format version {version} is not supported (this kith reads version {VERSION}); upgrade kith, or ask for a ticket made with `kith project ticket --legacy`"
    )]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The checksum does not match: the ticket was damaged (or cut short) on its way here.
    #[error("ticket is damaged: checksum mismatch; copy the whole ticket again")]
    Checksum,
    /// Malformed CBOR, or a value of the wrong type.
    #[error("ticket is malformed at {field}")]
    Cbor {
        /// The field being read.
        field: &'static str,
        /// The decoder's error.
        #[source]
        source: minicbor::decode::Error,
    },
    /// Well-formed CBOR of the wrong shape.
    #[error("ticket is malformed: {field} {problem}")]
    Shape {
        /// The field being read.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A field longer than its maximum, refused before it is read.
    #[error("ticket: {field} is {len} bytes; the most accepted is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// More attributes than [`MAX_ATTRIBUTES`](kith_identity::MAX_ATTRIBUTES).
    #[error("the ticket has {count} attributes; the most accepted is {max}")]
    TooManyAttributes {
        /// How many it announces.
        count: u64,
        /// The maximum.
        max: usize,
    },
    /// Attribute names not in strictly increasing order (so one is repeated, or the ticket was
    /// not written by kith).
    #[error("ticket attribute {name:?} is out of order or repeated")]
    AttributeOrder {
        /// The name (its first 40 characters).
        name: String,
    },
    /// An attribute that breaks the attribute rules.
    #[error("ticket attribute {name:?} is invalid")]
    Attribute {
        /// The name (its first 40 characters).
        name: String,
        /// The rule it breaks.
        #[source]
        source: CredentialError,
    },
    /// Bytes after the CBOR array.
    #[error("the ticket has {count} unexpected bytes after its contents")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Valid content in an encoding kith never writes (say, a number in more bytes than it
    /// needs). Refused so that every accepted binary ticket has exactly one form.
    #[error("the ticket is not in canonical form; it was not written by kith")]
    NonCanonical,
    /// A legacy ticket's `one_time_code` that is not 64 hex digits.
    #[error("legacy ticket: one_time_code must be 64 hex digits")]
    Code,
    /// A legacy ticket that is not JSON of the expected shape (unknown, missing or repeated
    /// field, wrong type). The source says which field.
    #[error("legacy ticket is not valid ticket JSON")]
    Json(#[source] serde_json::Error),
    /// The project description inside is invalid; the source says which field.
    #[error("the ticket's project description is invalid")]
    Project(#[source] ProjectError),
}

/// Why a project description was refused. Field names are those of the JSON form
/// (`authority.identifier`), also for the CBOR form, so a message reads the same whichever
/// form it came from.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// The JSON text is longer than [`MAX_PROJECT_JSON`](crate::project::MAX_PROJECT_JSON); it was not parsed.
    #[error("project description is {len} bytes; the most accepted is {max}")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not JSON, or JSON of another shape (an unknown, missing or repeated field, a value of
    /// the wrong type). The source says which field and where.
    #[error("project description is not valid project JSON")]
    Json(#[source] serde_json::Error),
    /// A version of the JSON form this kith does not read.
    #[error(
        "project description version {found} is not supported (this kith reads version {JSON_VERSION}); export it again with this kith's version"
    )]
    Version {
        /// The version found.
        found: u64,
    },
    /// A name that is empty, too long or has characters outside `A-Z a-z 0-9 _ -`.
    #[error(
        "project: name {value:?} is invalid: use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'"
    )]
    Name {
        /// The name (its first 80 characters).
        value: String,
    },
    /// An id that is not 32 lowercase hex digits.
    #[error("project: id {value:?} is invalid: it must be {ID_LEN} lowercase hex digits")]
    Id {
        /// The id (its first 80 characters).
        value: String,
    },
    /// An identifier field that does not parse.
    #[error("project: {field} is not an identifier")]
    Identifier {
        /// The field, e.g. `project_node.identifier`.
        field: &'static str,
        /// Why it does not parse.
        #[source]
        source: IdentifierError,
    },
    /// A hex field with a character that is not a hex digit.
    #[error("project: {field} is not hex: {character:?} at position {position}")]
    NotHex {
        /// The field.
        field: &'static str,
        /// The offending character.
        character: char,
        /// Its 1-based position in the field.
        position: usize,
    },
    /// A hex field with an odd number of digits.
    #[error("project: {field} has an odd number of hex digits ({len}); it was probably cut short")]
    OddHex {
        /// The field.
        field: &'static str,
        /// Its length in digits.
        len: usize,
    },
    /// A field longer than its maximum.
    #[error("project: {field} is {len} bytes; the most accepted is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The authority's identity does not import: malformed, or its key history does not
    /// verify.
    #[error("project: authority.identity is not a valid identity")]
    Identity(#[source] IdentityError),
    /// The stated authority identifier is not the identity's own.
    #[error("project: authority.identifier {stated} does not match its identity ({actual})")]
    IdentifierMismatch {
        /// The identifier the description states.
        stated: Identifier,
        /// The identifier of the identity it carries.
        actual: Identifier,
    },
    /// A route field that does not parse as a multiaddr.
    #[error("project: {field} is not a valid route")]
    Route {
        /// The field, e.g. `authority.route`.
        field: &'static str,
        /// Why it does not parse.
        #[source]
        source: MultiAddrError,
    },
    /// Malformed CBOR, cut short, or a value of the wrong type.
    #[error("project: malformed encoding at {field}")]
    Cbor {
        /// The field being read.
        field: &'static str,
        /// The decoder's error.
        #[source]
        source: minicbor::decode::Error,
    },
    /// Well-formed CBOR of the wrong shape.
    #[error("project: malformed encoding: {field} {problem}")]
    Shape {
        /// The field being read.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Why a call to the authority failed. Messages say what failed and what to check; none
/// contains a one-time code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No secure channel to the authority's listener could be opened.
    #[error(
        "cannot open a secure channel to the authority at {route}; check the authority route and that its node is running"
    )]
    Connect {
        /// The route to the listener.
        route: String,
        /// What the channel reported.
        #[source]
        source: SecureChannelError,
    },
    /// The channel's handshake did not finish in time: nothing at the end of the route
    /// answered it.
    #[error(
        "the authority at {route} did not answer the secure channel handshake within {after:?}; check the authority route and that its node is running"
    )]
    ConnectTimeout {
        /// The route to the listener.
        route: String,
        /// How long we waited.
        after: Duration,
    },
    /// The node at the end of the route proved another identity than the authority's.
    #[error(
        "the node at the authority route is {found}, not the project's authority {expected}; a wrong route or a man in the middle: check the project's authority route and identifier"
    )]
    WrongAuthority {
        /// The authority we meant to reach.
        expected: Identifier,
        /// Who answered.
        found: Identifier,
    },
    /// The request could not be encoded; nothing was sent.
    #[error("cannot encode the request to the authority's {service} service")]
    Encode {
        /// The service.
        service: &'static str,
        /// What the encoder reported.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be sent (the channel closed, or the node is shutting down).
    #[error("cannot send the request to the authority's {service} service")]
    Send {
        /// The service.
        service: &'static str,
        /// What the node reported.
        #[source]
        source: RouteError,
    },
    /// The authority did not answer in time.
    #[error(
        "the authority's {service} service did not answer within {after:?}; try again, or with a longer timeout"
    )]
    Timeout {
        /// The service.
        service: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The node shut down while we waited.
    #[error("the node shut down while waiting for the authority")]
    Closed,
    /// The authority's revocations did not decode or verify.
    #[error("the authority's revocations are not acceptable: {0}")]
    BadRevocations(String),
    /// A paged list answered a page that points back at itself, so it would never end.
    #[error("the authority's {service} list does not move on from one page to the next")]
    PageStalled {
        /// The service.
        service: &'static str,
    },
    /// The secure channel to the authority ended while a request waited for its answer.
    #[error("no answer to the {service} request: {how}")]
    ChannelEnded {
        /// The service.
        service: &'static str,
        /// How the channel ended.
        how: ChannelEnded,
    },
    /// A node on the way could not deliver the request, and answered with why.
    #[error("the request to the authority's {service} service was not delivered")]
    NotDelivered {
        /// The service.
        service: &'static str,
        /// The error message that came back ([`RequestError::Undeliverable`] or a malformed
        /// one).
        #[source]
        source: RequestError,
    },
    /// The authority refused the request; [`ApiError::kind`] says why, for programs.
    #[error("the authority refused: {0}")]
    Refused(ApiError),
    /// An answer arrived that did not come through the authority's channel.
    #[error(
        "an answer to the {service} request did not come through the channel to the authority; ignored it"
    )]
    UnexpectedReply {
        /// The service.
        service: &'static str,
    },
    /// The credential the authority sent does not decode or verify.
    #[error("the authority sent a credential we cannot accept; ask the project's admin")]
    BadCredential(#[source] CredentialCheckError),
    /// The node could not register a mailbox for the answer (it is shutting down).
    #[error("cannot wait for the authority's answer")]
    Mailbox(#[source] StartError),
}

/// Why a kept relay was not confirmed up (see `keeper::RelayKeeper::confirm`).
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// Registering the relay at the project node failed, or the project node refused it.
    #[error(transparent)]
    Failed(Arc<ClientError>),
    /// The keeper is no longer running.
    #[error("the relay is no longer kept")]
    Stopped,
}

/// Why a credential in an [`Enrolled`] answer was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialCheckError {
    /// The `credential` field is not hex.
    #[error("the credential is not hex")]
    NotHex,
    /// The bytes are not a credential.
    #[error("the credential does not decode")]
    Decode(#[source] DecodeError),
    /// It is not a valid credential for us from the authority.
    #[error("the credential does not verify")]
    Verify(#[source] CredentialError),
    /// It is valid, but not what the answer says it is.
    #[error("the credential's attributes or expiry differ from what the authority's answer lists")]
    Mismatch,
}

/// Why a [`JoinWait`] ended without a credential. Text that came from the authority is
/// shown with its control characters escaped.
#[derive(Debug, thiserror::Error)]
pub enum JoinWaitError {
    /// No decision came before the deadline; the request may still be pending.
    #[error("no decision on request {id} within {after:?}; it may still be pending")]
    TimedOut {
        /// The request.
        id: String,
        /// How long the wait was given.
        after: Duration,
        /// Why the last reconnection failed, if the wait ended reconnecting.
        #[source]
        last: Option<ClientError>,
    },
    /// The authority approved the request but sent no credential with the approval.
    #[error(
        "request {id} was approved, but the authority sent no credential; ask its admin (the authority should have sent one)"
    )]
    NoCredential {
        /// The request.
        id: String,
    },
    /// An admin denied the request.
    #[error("the request was denied by {}", Denial(.0))]
    Denied(Box<JoinRequestInfo>),
    /// The request expired without a decision.
    #[error("request {id} expired at {at} (Unix seconds) without a decision; file a new one")]
    Expired {
        /// The request.
        id: String,
        /// When it expired.
        at: u64,
    },
    /// The authority refused to let us wait for the request (not ours, unknown, …).
    #[error(
        "cannot wait for request {id}: the authority refused: {}{}",
        Escaped(&refusal.message),
        refusal_hint(refusal.kind)
    )]
    Refused {
        /// The request.
        id: String,
        /// What the authority said.
        refusal: ApiError,
    },
    /// Reconnecting, another identity than the authority answered at its route.
    #[error("request {id} is still pending, but another node answers at the authority's route now")]
    AuthorityChanged {
        /// The request.
        id: String,
        /// The wrong-authority error.
        #[source]
        source: ClientError,
    },
}

/// A hint for a refusal to wait: a request that is not found or not ours is most often
/// another identity's, or another authority's.
fn refusal_hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound | ErrorKind::Forbidden => {
            " (is it a request this identity filed, with this authority?)"
        }
        _ => "",
    }
}

/// Who denied a request and why, as a denial is shown.
struct Denial<'a>(&'a JoinRequestInfo);

impl fmt::Display for Denial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.decided_by {
            Some(by) => write!(f, "{}", Escaped(by))?,
            None => f.write_str("an administrator")?,
        }
        match self.0.reason.as_deref().map(str::trim) {
            Some(reason) if !reason.is_empty() => write!(f, ": {}", Escaped(reason)),
            _ => f.write_str(" (no reason given)"),
        }
    }
}

/// Text from the wire, safe to show on a terminal: control characters are escaped, so a
/// reason or a message cannot rewrite what the user sees.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}
