//! Client → server frames.
//!
//! Parsing is two-phase: serde first proves the frame is a JSON object and borrows
//! each known field as raw JSON, then each field is typed by hand. That is what lets
//! every failure carry the protocol's exact code (`invalid_json` for text that is not a
//! JSON object, `unsupported_type`, `bad_request` for a missing or ill-typed field)
//! together with the request's `id`, and it keeps `message` byte-for-byte as sent.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel;

/// The deepest nesting of arrays and objects a published `message` may have (the
/// message itself is level 1). Messages are forwarded to every subscriber untouched,
/// and many clients' JSON parsers give up on deep nesting (Python's `json` at about
/// 1000 levels, serde_json at 128), so one publisher could otherwise make a channel
/// unreadable for everyone.
pub const MAX_MESSAGE_DEPTH: usize = 64;

/// Whether `json` — text already known to be valid JSON — nests arrays and objects
/// deeper than `limit`. One pass over the bytes that only tracks whether it is inside
/// a string: no second parse, no allocation, and it stops at the first level too deep.
pub fn nests_deeper_than(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The error codes of the client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    UnsupportedType,
    BadRequest,
    Forbidden,
    NotSubscribed,
    RateLimited,
    TooLarge,
    Unavailable,
    Internal,
    /// The application's backend refused a subscribe (subscribe proxy).
    PermissionDenied,
    /// The application's backend refused a broadcast (publish proxy); its own code
    /// is in the frame's `app_code`.
    Rejected,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::UnsupportedType => "unsupported_type",
            Self::BadRequest => "bad_request",
            Self::Forbidden => "forbidden",
            Self::NotSubscribed => "not_subscribed",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::PermissionDenied => "permission_denied",
            Self::Rejected => "rejected",
        }
    }

    /// Every code, in the order of docs/protocol.md.
    pub const ALL: [Self; 11] = [
        Self::InvalidJson,
        Self::UnsupportedType,
        Self::BadRequest,
        Self::Forbidden,
        Self::NotSubscribed,
        Self::RateLimited,
        Self::TooLarge,
        Self::Unavailable,
        Self::Internal,
        Self::PermissionDenied,
        Self::Rejected,
    ];

    /// The code spelled `code` on the wire, if it is one of ours.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

// Clients read error codes too (`frames::ServerFrame`), so the code is its wire string
// in both directions.
impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&code)
            .ok_or_else(|| serde::de::Error::unknown_variant(&code, &ERROR_CODE_NAMES))
    }
}

const ERROR_CODE_NAMES: [&str; 11] = [
    "invalid_json",
    "unsupported_type",
    "bad_request",
    "forbidden",
    "not_subscribed",
    "rate_limited",
    "too_large",
    "unavailable",
    "internal",
    "permission_denied",
    "rejected",
];

/// A frame the gateway refuses, ready to be turned into an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The request's `id`, echoed back when the frame had a usable one.
    pub id: Option<Id>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>, id: Option<Id>) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }

    fn bad(message: impl Into<String>, id: &Option<Id>) -> Self {
        Self::new(ErrorCode::BadRequest, message, id.clone())
    }
}

/// A request id, kept as the client's raw JSON (a number or a string) so it is
/// echoed back exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(Box<str>);

impl Id {
    /// The id as raw JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// An id from raw JSON text; `None` unless it is a JSON number or string.
    pub fn from_raw(raw: &RawValue) -> Option<Self> {
        let text = raw.get();
        let first = text.as_bytes().first()?;
        (*first == b'"' || *first == b'-' || first.is_ascii_digit()).then(|| Self(text.into()))
    }
}

/// The position a client has already seen in a channel: `{"offset":41,"epoch":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// Raw JSON text kept exactly as received.
#[derive(Debug, Clone)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// `{"type":"auth","token":…,"channels":[…],"batch":bool}`; `type` may be
    /// omitted in a connection's first frame (the original design's shape).
    Auth {
        /// Absent when the application's backend says who the connection is
        /// (connect proxy).
        token: Option<String>,
        channels: Vec<String>,
        batch: bool,
        /// What the first frame tells the connect proxy.
        data: Option<RawJson>,
        id: Option<Id>,
    },
    Subscribe {
        channel: String,
        since: Option<Since>,
        /// Also deliver the channel's `join` / `leave` events.
        join_leave: bool,
        id: Option<Id>,
    },
    Unsubscribe {
        channel: String,
        id: Option<Id>,
    },
    Broadcast {
        channel: String,
        /// The message exactly as the client wrote it (`null` included).
        message: RawJson,
        id: Option<Id>,
    },
    Ping {
        id: Option<Id>,
    },
    /// `{"type":"history","channel":…,"since":{…}?,"limit":n?,"reverse":bool?}`: the
    /// channel's kept messages (after `since` when it names the current epoch).
    History {
        channel: String,
        since: Option<Since>,
        /// How many at most; the gateway applies its default and cap.
        limit: Option<u64>,
        /// Newest first.
        reverse: bool,
        id: Option<Id>,
    },
    /// `{"type":"presence","channel":…}`: who is in the channel.
    Presence {
        channel: String,
        id: Option<Id>,
    },
    /// `{"type":"presence_stats","channel":…}`: how many connections and users.
    PresenceStats {
        channel: String,
        id: Option<Id>,
    },
}

impl ClientMsg {
    /// The frame's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Broadcast { .. } => "broadcast",
            Self::Ping { .. } => "ping",
            Self::History { .. } => "history",
            Self::Presence { .. } => "presence",
            Self::PresenceStats { .. } => "presence_stats",
        }
    }

    pub fn id(&self) -> Option<&Id> {
        match self {
            Self::Auth { id, .. }
            | Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Broadcast { id, .. }
            | Self::History { id, .. }
            | Self::Presence { id, .. }
            | Self::PresenceStats { id, .. }
            | Self::Ping { id } => id.as_ref(),
        }
    }
}

/// Every field any frame may carry, borrowed as raw JSON.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channels: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    batch: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reverse: Option<&'a RawValue>,
    #[serde(borrow, default)]
    join_leave: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// `Some` whenever the key is present, `"message":null` included.
    #[serde(borrow, default, deserialize_with = "present")]
    message: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn invalid_json() -> FrameError {
    FrameError::new(ErrorCode::InvalidJson, "invalid message format", None)
}

/// Parses one client text frame.
pub fn parse(text: &str) -> Result<ClientMsg, FrameError> {
    // serde accepts a JSON array for a struct, so insist on an object up front.
    if !text.trim_start().starts_with('{') {
        return Err(invalid_json());
    }
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|_| invalid_json())?;
    let id = match raw.id {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => match Id::from_raw(v) {
            Some(id) => Some(id),
            None => return Err(FrameError::bad("id must be a number or a string", &None)),
        },
    };
    let kind: Option<String> = match raw.kind {
        None => None,
        Some(v) => match serde_json::from_str::<String>(v.get()) {
            Ok(s) => Some(s),
            Err(_) => {
                return Err(FrameError::new(
                    ErrorCode::UnsupportedType,
                    "unsupported message type",
                    id,
                ));
            }
        },
    };
    match kind.as_deref() {
        Some("auth") => parse_auth(&raw, id),
        None if raw.token.is_some() => parse_auth(&raw, id),
        Some("subscribe") => Ok(ClientMsg::Subscribe {
            channel: channel_field(&raw, &id)?,
            since: since_field(&raw, &id)?,
            join_leave: bool_field(raw.join_leave, "join_leave", &id)?,
            id,
        }),
        Some("presence") => Ok(ClientMsg::Presence {
            channel: channel_field(&raw, &id)?,
            id,
        }),
        Some("presence_stats") => Ok(ClientMsg::PresenceStats {
            channel: channel_field(&raw, &id)?,
            id,
        }),
        Some("history") => Ok(ClientMsg::History {
            channel: channel_field(&raw, &id)?,
            since: since_field(&raw, &id)?,
            limit: match raw.limit {
                None => None,
                Some(v) if v.get() == "null" => None,
                Some(v) => match serde_json::from_str::<u64>(v.get()) {
                    Ok(n) if n > 0 => Some(n),
                    _ => return Err(FrameError::bad("limit must be a positive integer", &id)),
                },
            },
            reverse: bool_field(raw.reverse, "reverse", &id)?,
            id,
        }),
        Some("unsubscribe") => Ok(ClientMsg::Unsubscribe {
            channel: channel_field(&raw, &id)?,
            id,
        }),
        Some("broadcast") => {
            let channel = channel_field(&raw, &id)?;
            let Some(message) = raw.message else {
                return Err(FrameError::bad("missing field: message", &id));
            };
            if nests_deeper_than(message.get().as_bytes(), MAX_MESSAGE_DEPTH) {
                return Err(FrameError::bad(
                    format!("message nests deeper than {MAX_MESSAGE_DEPTH} levels"),
                    &id,
                ));
            }
            Ok(ClientMsg::Broadcast {
                channel,
                message: RawJson(message.to_owned()),
                id,
            })
        }
        Some("ping") => Ok(ClientMsg::Ping { id }),
        _ => Err(FrameError::new(
            ErrorCode::UnsupportedType,
            "unsupported message type",
            id,
        )),
    }
}

fn parse_auth(raw: &RawFrame<'_>, id: Option<Id>) -> Result<ClientMsg, FrameError> {
    let token = match raw.token {
        Some(v) if v.get() == "null" => None,
        Some(v) => Some(
            serde_json::from_str::<String>(v.get())
                .map_err(|_| FrameError::bad("token must be a string", &id))?,
        ),
        None => None,
    };
    let channels = match raw.channels {
        None => Vec::new(),
        Some(v) if v.get() == "null" => Vec::new(),
        Some(v) => serde_json::from_str::<Vec<String>>(v.get())
            .map_err(|_| FrameError::bad("channels must be an array of strings", &id))?,
    };
    let batch = match raw.batch {
        None => false,
        Some(v) => serde_json::from_str::<bool>(v.get())
            .map_err(|_| FrameError::bad("batch must be a boolean", &id))?,
    };
    Ok(ClientMsg::Auth {
        token,
        channels,
        batch,
        data: raw.data.map(|d| RawJson(d.to_owned())),
        id,
    })
}

/// An optional boolean field (`null` or absent is `false`).
fn bool_field(v: Option<&RawValue>, name: &str, id: &Option<Id>) -> Result<bool, FrameError> {
    match v {
        None => Ok(false),
        Some(v) if v.get() == "null" => Ok(false),
        Some(v) => serde_json::from_str::<bool>(v.get())
            .map_err(|_| FrameError::bad(format!("{name} must be a boolean"), id)),
    }
}

fn since_field(raw: &RawFrame<'_>, id: &Option<Id>) -> Result<Option<Since>, FrameError> {
    match raw.since {
        None => Ok(None),
        Some(v) if v.get() == "null" => Ok(None),
        Some(v) => serde_json::from_str::<Since>(v.get())
            .map(Some)
            .map_err(|_| {
                FrameError::bad(
                    "since must be {\"offset\": <integer>, \"epoch\": <string>}",
                    id,
                )
            }),
    }
}

fn channel_field(raw: &RawFrame<'_>, id: &Option<Id>) -> Result<String, FrameError> {
    let Some(v) = raw.channel else {
        return Err(FrameError::bad("missing field: channel", id));
    };
    let name: String = serde_json::from_str(v.get())
        .map_err(|_| FrameError::bad("channel must be a string", id))?;
    channel::validate(&name).map_err(|e| FrameError::bad(e.to_string(), id))?;
    Ok(name)
}

#[cfg(test)]
mod tests;
