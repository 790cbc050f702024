//! The security routes of the HTTP API: sign-in and sign-out, TOTP
//! enrolment, and the admin API for users and sessions. They run on one
//! worker thread (argon2id takes tens of milliseconds and must never run on
//! an event loop); the answer goes back to the HTTP session as a
//! [`SecurityDone`] event.
//!
//! | route | who | body |
//! |---|---|---|
//! | `POST /v1/auth/sign-in` | anyone | `{"user","password","totp"?}` → `{"user","token","expires_ms"}` |
//! | `POST /v1/auth/sign-out` | the session's holder | — |
//! | `POST /v1/auth/totp/enroll` | the session's holder | → `{"otpauth_uri"}` |
//! | `POST /v1/auth/totp/confirm` | the session's holder | `{"code"}` |
//! | `GET /v1/admin/users` | admin | → `{"users":[…]}` |
//! | `POST /v1/admin/users` | admin | `{"user","password","roles"}` |
//! | `POST /v1/admin/users/{user}/password` | admin | `{"password"}` |
//! | `POST /v1/admin/users/{user}/disable`, `…/enable` | admin | — |
//! | `POST /v1/admin/users/{user}/roles` | admin | `{"roles"}` |
//! | `DELETE /v1/admin/sessions/{id}` | admin | — |

use std::net::IpAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Map, Value};
use starling_broker::security::{Actor, SecurityError, SecurityService};
use starling_broker::{ConnRef, Notifier};

use crate::chat::ChatError;

/// Jobs waiting for the worker. Sign-ins are rare next to messages; a burst
/// of a whole company signing in at 9:00 fits, and beyond it requests are
/// answered "unavailable" rather than queued without bound.
const SECURITY_QUEUE_MAX: usize = 4096;

/// The answer of a security route, for the HTTP session.
pub struct SecurityDone {
    pub result: Result<Value, ChatError>,
}

/// What the worker does.
#[derive(Debug)]
pub(crate) enum Op {
    SignIn {
        user: String,
        password: String,
        totp: Option<String>,
        address: IpAddr,
    },
    SignOut {
        token: String,
    },
    TotpEnroll {
        user: String,
        /// The session asking (its id), if a session token.
        session: Option<String>,
    },
    TotpConfirm {
        user: String,
        code: String,
        session: Option<String>,
    },
    ListUsers,
    AddUser {
        user: String,
        password: String,
        roles: Vec<String>,
    },
    SetPassword {
        user: String,
        password: String,
    },
    SetDisabled {
        user: String,
        disabled: bool,
    },
    SetRoles {
        user: String,
        roles: Vec<String>,
    },
    RevokeSession {
        id: String,
    },
}

struct Job {
    conn: ConnRef,
    by: Actor,
    op: Op,
}

/// The security routes and their worker thread.
pub struct SecurityApi {
    service: Arc<SecurityService>,
    jobs: Sender<Job>,
    _thread: JoinHandle<()>,
}

pub(crate) fn chat_error(error: SecurityError) -> ChatError {
    match error {
        SecurityError::Invalid(message) => ChatError::invalid(message),
        SecurityError::Denied(message) => ChatError::new("unauthenticated", message),
        SecurityError::Throttled { .. } => ChatError {
            temporary: true,
            ..ChatError::new("rate_limited", error.to_string())
        },
        SecurityError::NotFound(message) => ChatError::not_found(message),
        SecurityError::Internal(message) => ChatError::internal(message),
    }
}

fn string(body: &Map<String, Value>, field: &str) -> Result<String, ChatError> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ChatError::invalid(format!("`{field}` must be a string")))
}

fn roles(body: &Map<String, Value>) -> Result<Vec<String>, ChatError> {
    body.get("roles")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| ChatError::invalid("`roles` must be an array of role names"))
}

impl SecurityApi {
    /// Starts the worker.
    pub fn start(service: Arc<SecurityService>, notifier: Notifier) -> Arc<SecurityApi> {
        let (jobs, receiver) = crossbeam_channel::bounded(SECURITY_QUEUE_MAX);
        let worker_service = service.clone();
        let thread = std::thread::Builder::new()
            .name("starling-security".into())
            .spawn(move || run(worker_service, receiver, notifier))
            .expect("start the security thread");
        Arc::new(SecurityApi {
            service,
            jobs,
            _thread: thread,
        })
    }

    /// Maps a request under `/v1/auth` or `/v1/admin` to an operation and
    /// the status of its success, checking who asks.
    pub(crate) fn route(
        &self,
        post: bool,
        delete: bool,
        segments: &[String],
        body: impl FnOnce() -> Result<Map<String, Value>, ChatError>,
        token: Option<&str>,
        peer: std::net::SocketAddr,
    ) -> Result<(Op, u16, Actor), ChatError> {
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let mut by = Actor {
            user: String::new(),
            source: peer.to_string(),
        };
        let authorizer = self.service.authorizer();
        let holder = || {
            let token = token.ok_or_else(|| {
                ChatError::new(
                    "unauthenticated",
                    "send `Authorization: Bearer <token>` (from POST /v1/auth/sign-in)",
                )
            })?;
            authorizer
                .principal_for(token, Some(peer))
                .map_err(|denied| ChatError::new("unauthenticated", denied.0))
        };
        let admin = || {
            let principal = holder()?;
            if authorizer.is_admin(&principal) {
                Ok(principal.user.to_string())
            } else {
                Err(ChatError::denied(format!(
                    "{} has no admin role that counts from this address",
                    principal.user
                )))
            }
        };
        let op = match (post, delete, segments.as_slice()) {
            (true, _, ["auth", "sign-in"]) => {
                let body = body()?;
                (
                    Op::SignIn {
                        user: string(&body, "user")?,
                        password: string(&body, "password")?,
                        totp: body.get("totp").and_then(Value::as_str).map(str::to_string),
                        address: peer.ip(),
                    },
                    200,
                )
            }
            (true, _, ["auth", "sign-out"]) => {
                by.user = holder()?.user.to_string();
                let token = token.unwrap_or_default().to_string();
                (Op::SignOut { token }, 200)
            }
            (true, _, ["auth", "totp", "enroll"]) => {
                let principal = holder()?;
                let user = principal.user.to_string();
                by.user = user.clone();
                // A principal without a session (a client certificate) is
                // not the operator: it opened nothing with a code.
                let session = Some(principal.session.as_deref().unwrap_or("").to_string());
                (Op::TotpEnroll { user, session }, 200)
            }
            (true, _, ["auth", "totp", "confirm"]) => {
                let principal = holder()?;
                let user = principal.user.to_string();
                by.user = user.clone();
                let code = string(&body()?, "code")?;
                let session = Some(principal.session.as_deref().unwrap_or("").to_string());
                (
                    Op::TotpConfirm {
                        user,
                        code,
                        session,
                    },
                    200,
                )
            }
            (false, false, ["admin", "users"]) => {
                by.user = admin()?;
                (Op::ListUsers, 200)
            }
            (true, _, ["admin", "users"]) => {
                by.user = admin()?;
                let body = body()?;
                (
                    Op::AddUser {
                        user: string(&body, "user")?,
                        password: string(&body, "password")?,
                        roles: roles(&body)?,
                    },
                    201,
                )
            }
            (true, _, ["admin", "users", user, action]) => {
                by.user = admin()?;
                let user = user.to_string();
                let op = match *action {
                    "password" => Op::SetPassword {
                        user,
                        password: string(&body()?, "password")?,
                    },
                    "disable" => Op::SetDisabled {
                        user,
                        disabled: true,
                    },
                    "enable" => Op::SetDisabled {
                        user,
                        disabled: false,
                    },
                    "roles" => Op::SetRoles {
                        user,
                        roles: roles(&body()?)?,
                    },
                    other => {
                        return Err(ChatError::not_found(format!(
                            "no admin action {other:?}; use password, disable, enable or roles"
                        )))
                    }
                };
                (op, 200)
            }
            (_, true, ["admin", "sessions", id]) => {
                by.user = admin()?;
                (Op::RevokeSession { id: id.to_string() }, 200)
            }
            _ => {
                return Err(ChatError::not_found(
                    "no such security route; see /v1/openapi.json",
                ))
            }
        };
        Ok((op.0, op.1, by))
    }

    /// Hands an operation to the worker; the answer arrives as a
    /// [`SecurityDone`] event of `conn`.
    pub(crate) fn submit(&self, conn: ConnRef, by: Actor, op: Op) -> Result<(), ChatError> {
        match self.jobs.try_send(Job { conn, by, op }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ChatError::unavailable(
                "too many sign-in and admin requests are waiting; try again shortly",
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(ChatError::unavailable("the security service has stopped"))
            }
        }
    }
}

fn execute(service: &SecurityService, by: &Actor, op: Op) -> Result<Value, SecurityError> {
    let done = |_| json!({});
    match op {
        Op::SignIn {
            user,
            password,
            totp,
            address,
        } => service
            .sign_in(&user, &password, totp.as_deref(), address)
            .map(|signed| json!(signed)),
        Op::SignOut { token } => service.sign_out(by, &token).map(done),
        Op::TotpEnroll { user, session } => service
            .totp_enroll(by, &user, session.as_deref())
            .map(|uri| json!({ "otpauth_uri": uri })),
        Op::TotpConfirm {
            user,
            code,
            session,
        } => service
            .totp_confirm(by, &user, &code, session.as_deref())
            .map(done),
        Op::ListUsers => Ok(json!({ "users": service.list_users() })),
        Op::AddUser {
            user,
            password,
            roles,
        } => service.add_user(by, &user, &password, &roles).map(done),
        Op::SetPassword { user, password } => service.set_password(by, &user, &password).map(done),
        Op::SetDisabled { user, disabled } => service.set_disabled(by, &user, disabled).map(done),
        Op::SetRoles { user, roles } => service.set_roles(by, &user, &roles).map(done),
        Op::RevokeSession { id } => service.revoke_session(by, &id).map(done),
    }
}

fn run(service: Arc<SecurityService>, jobs: Receiver<Job>, notifier: Notifier) {
    for Job { conn, by, op } in jobs {
        let result = execute(&service, &by, op).map_err(chat_error);
        notifier.notify(conn, Box::new(SecurityDone { result }));
    }
}
