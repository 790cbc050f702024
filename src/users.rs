//! `starling user …`: user management on a stopped server's data directory.
//!
//! The changes are the same records the admin API writes (`$auth/users`,
//! `$auth/sessions`), appended through an engine started in this process
//! without listeners. The first administrator is made this way; later
//! changes can go through the running server's admin API.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use starling_broker::security::{Actor, SecurityAuthorizer, SecurityService};
use starling_broker::{Engine, EngineError, LoopbackAuthorizer};
use starling_storage::StorageError;

use crate::config::Config;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is read from the first line of stdin.
    Add {
        user: String,
        /// A role from [[auth.roles]] (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Set a user's password (read from stdin); their sessions end.
    Passwd {
        user: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Disable a user; their sessions end.
    Disable {
        user: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Enable a disabled user.
    Enable {
        user: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replace a user's roles.
    Roles {
        user: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List users (name, roles, disabled, TOTP, open sessions).
    List {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("give the password on the first line of stdin, e.g. `printf '%s\\n' \"$PASSWORD\" | starling user add …`");
    }
    Ok(password)
}

/// Runs `f` with a security service over the configured data directory.
fn with_service<T>(
    config: Option<&std::path::Path>,
    f: impl FnOnce(&SecurityService) -> Result<T>,
) -> Result<T> {
    let config = Config::load(config, std::env::vars())?;
    let authorizer =
        SecurityAuthorizer::new(&config.auth).context("the [auth] configuration is not valid")?;
    let engine = match Engine::start(
        config.engine.clone(),
        Arc::new(LoopbackAuthorizer),
        Vec::new(),
    ) {
        Ok(engine) => engine,
        Err(EngineError::Storage(StorageError::Locked { path })) => bail!(
            "{} is in use by a running server; stop it, or make the change through its admin API \
             (POST /v1/admin/users with an administrator's token, see docs/SECURITY.md)",
            path.display()
        ),
        Err(error) => return Err(error).context("cannot open the data directory"),
    };
    let audit = crate::audit_writer(&config)?;
    let client = engine.connect(SecurityService::principal());
    let result = SecurityService::start(authorizer, config.auth.clone(), client, None, audit)
        .context("cannot load the users")
        .and_then(|service| f(&service));
    let stopped = engine
        .shutdown()
        .context("the data directory was not closed cleanly");
    result.and_then(|value| stopped.map(|()| value))
}

pub fn run(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add {
            user,
            roles,
            config,
        } => {
            let password = read_password()?;
            with_service(config.as_deref(), |service| {
                service.add_user(&Actor::command_line(), &user, &password, &roles)?;
                println!("added user {user} with roles {roles:?}");
                Ok(())
            })
        }
        UserCommand::Passwd { user, config } => {
            let password = read_password()?;
            with_service(config.as_deref(), |service| {
                service.set_password(&Actor::command_line(), &user, &password)?;
                println!("set the password of {user}; their sessions ended");
                Ok(())
            })
        }
        UserCommand::Disable { user, config } => with_service(config.as_deref(), |service| {
            service.set_disabled(&Actor::command_line(), &user, true)?;
            println!("disabled {user}; their sessions ended");
            Ok(())
        }),
        UserCommand::Enable { user, config } => with_service(config.as_deref(), |service| {
            service.set_disabled(&Actor::command_line(), &user, false)?;
            println!("enabled {user}");
            Ok(())
        }),
        UserCommand::Roles {
            user,
            roles,
            config,
        } => with_service(config.as_deref(), |service| {
            service.set_roles(&Actor::command_line(), &user, &roles)?;
            println!("{user} now has roles {roles:?}");
            Ok(())
        }),
        UserCommand::List { config } => with_service(config.as_deref(), |service| {
            for user in service.list_users() {
                println!(
                    "{}\troles={}\t{}\ttotp={}\tsessions={}",
                    user.user,
                    user.roles.join(","),
                    if user.disabled { "disabled" } else { "enabled" },
                    user.totp,
                    user.sessions
                );
            }
            Ok(())
        }),
    }
}
