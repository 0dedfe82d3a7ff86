//! The control server: one JSON request line from the CLI, one answer line, over the node's
//! Unix socket. Each request is handed to the part of the node that owns it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kith_node::{Address, Route};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::running::RunningNode;
use crate::control::{MAX_LINE, Request, Response};
use kith_identity::secure_channel::ChannelHop;

use crate::home::routes::Target;

/// Answer the one request on `stream`; a `stop` request also tells the daemon to stop.
pub(crate) async fn serve(stream: UnixStream, running: Arc<RunningNode>, stop: mpsc::Sender<()>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_LINE);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let (response, stopping) = match serde_json::from_str::<Request>(&line) {
        Err(e) => (
            Response::Error(format!("invalid control request: {e}")),
            false,
        ),
        Ok(Request::Status) => (to_response(Ok(running.status())), false),
        Ok(Request::ChannelCreate { to, timeout_ms }) => {
            let result = async {
                let to = parse_hops(&to)?;
                running
                    .channels
                    .open(to, Duration::from_millis(timeout_ms))
                    .await
            }
            .await;
            (to_response(result), false)
        }
        Ok(Request::ChannelList) => (to_response(Ok(running.channels.list())), false),
        Ok(Request::RelayCreate {
            name,
            at,
            timeout_ms,
            keep_on_failure,
        }) => (
            to_response(
                running
                    .relays
                    .create(
                        &name,
                        &at,
                        Duration::from_millis(timeout_ms),
                        keep_on_failure,
                    )
                    .await,
            ),
            false,
        ),
        Ok(Request::RelayList) => (to_response(Ok(running.relays.list())), false),
        Ok(Request::RelayDelete { name }) => {
            (to_response(running.relays.delete(&name).await), false)
        }
        Ok(Request::ChannelDelete { address }) => {
            (to_response(running.channels.close(&address)), false)
        }
        Ok(Request::OutletCreate(config)) => (
            to_response(running.portals.outlet_create(config).await),
            false,
        ),
        Ok(Request::OutletList) => (to_response(Ok(running.portals.outlet_list())), false),
        Ok(Request::OutletDelete { name }) => (
            to_response(running.portals.outlet_delete(&name).await),
            false,
        ),
        Ok(Request::InletCreate(config)) => (
            to_response(running.portals.inlet_create(config).await),
            false,
        ),
        Ok(Request::InletList) => (to_response(Ok(running.portals.inlet_list())), false),
        Ok(Request::InletDelete { alias }) => (
            to_response(running.portals.inlet_delete(&alias).await),
            false,
        ),
        Ok(Request::Stop) => (Response::Ok(serde_json::Value::Null), true),
        Ok(Request::ReloadCredentials) => (
            to_response(
                running
                    .identity
                    .reload()
                    .await
                    .map(|n| serde_json::json!({ "credentials": n })),
            ),
            false,
        ),
        Ok(Request::Send {
            route,
            payload,
            timeout_ms,
            channels,
        }) => {
            let result = async {
                let target = Target {
                    channels: channels
                        .iter()
                        .map(|c| {
                            Ok(ChannelHop {
                                route: parse_hops(&c.to)?,
                                peer: c
                                    .peer
                                    .as_deref()
                                    .map(str::parse)
                                    .transpose()
                                    .context("invalid channel peer")?,
                            })
                        })
                        .collect::<Result<_>>()?,
                    route: parse_hops(&route)?,
                };
                running
                    .channels
                    .send(target, payload, Duration::from_millis(timeout_ms))
                    .await
            }
            .await;
            (to_response(result), false)
        }
    };
    let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
    if stopping {
        let _ = stop.send(()).await;
        // Hold the connection open until the daemon drops it at the end of its shutdown.
        std::future::pending::<()>().await;
    }
}

fn parse_hops(hops: &[String]) -> Result<Route> {
    let hops = hops
        .iter()
        .map(|h| {
            h.parse::<Address>()
                .with_context(|| format!("invalid hop {h:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Route::try_from_iter(hops)?)
}

fn to_response<T: Serialize>(r: Result<T>) -> Response {
    match r.and_then(|v| serde_json::to_value(v).map_err(Into::into)) {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(format!("{e:#}")),
    }
}
