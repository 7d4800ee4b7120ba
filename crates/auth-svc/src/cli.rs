//! The operator subcommands: `user add|del|list`, `token` and `keys rotate`.
//! Results go to stdout (one item per line, for scripts); errors are one line
//! on stderr with exit 64 for bad usage and 1 for everything else.
//!
//! They work on the configured Redis directly: a memory engine lives inside
//! one `herald` process, out of their reach (its users are managed through the
//! admin API).

use std::process::ExitCode;

use herald_common::config::EXIT_CONFIG;
use herald_common::jwt::Alg;
use herald_common::keys::Keys;
use herald_common::store;
use herald_proto::time::now_rfc3339;

use crate::config::{Command, Config, KeysCommand, TokenArgs, UserCommand, split_list};
use crate::password;
use crate::signing::KeyStore;
use crate::store::AuthStore;
use crate::tokens::access_claims;
use crate::users::{self, User, UserStore};

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or configuration cannot work (exit 64).
    #[error("{0}")]
    Usage(String),
    /// Anything else (exit 1).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Runs one subcommand; prints its result or one error line.
pub async fn run(command: Command, config: Config) -> ExitCode {
    match execute(command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("auth-svc: {msg}");
            ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(64))
        }
        Err(CliError::Failed(e)) => {
            eprintln!("auth-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Configuration problems, as one usage error.
fn usage(e: herald_common::config::ConfigErrors) -> CliError {
    CliError::Usage(e.lines().join("; "))
}

async fn execute(command: Command, config: Config) -> Result<(), CliError> {
    let keys = Keys::new(config.common.redis_prefix.clone())
        .sharded(config.common.cluster_seeds().is_some());
    match command {
        Command::Serve => Err(CliError::Usage(
            "serve is not a one-shot command".to_owned(),
        )),
        Command::User(cmd) => user(cmd, &config, keys).await,
        Command::Token(args) => token(args, &config, keys).await,
        Command::Keys(KeysCommand::Rotate) => rotate(&config, keys).await,
    }
}

/// The configured Redis, as the store the subcommands work on.
async fn connect(config: &Config) -> Result<AuthStore, CliError> {
    let (_client, conn) = store::connect(&config.common.redis_target())
        .await
        .map_err(anyhow::Error::from)?;
    Ok(AuthStore::Redis(conn))
}

async fn user(cmd: UserCommand, config: &Config, keys: Keys) -> Result<(), CliError> {
    let store = UserStore::new(keys);
    match cmd {
        UserCommand::Add {
            name,
            password,
            channels,
            publish,
        } => {
            let password = if password == "-" {
                read_password()?
            } else {
                password
            };
            let channels = split_list(&channels);
            let publish = split_list(&publish);
            users::validate(
                &name,
                &password,
                config.min_password_length,
                &channels,
                &publish,
            )
            .map_err(|e| match e {
                users::InvalidUser::PasswordTooShort(_) => {
                    CliError::Usage(format!("{e} (HERALD_MIN_PASSWORD_LENGTH)"))
                }
                other => CliError::Usage(other.to_string()),
            })?;
            let redis = connect(config).await?;
            let hash = password::hash_sync(&password).map_err(anyhow::Error::from)?;
            let user = User {
                username: name,
                password_hash: hash,
                channels,
                publish,
                created_at: now_rfc3339(),
            };
            if !store
                .create(&redis, &user)
                .await
                .map_err(anyhow::Error::from)?
            {
                return Err(anyhow::anyhow!("user {:?} already exists", user.username).into());
            }
            println!("created user {}", user.username);
        }
        UserCommand::Del { name } => {
            let redis = connect(config).await?;
            let deleted = users::valid_username(&name)
                && store
                    .delete(&redis, &name)
                    .await
                    .map_err(anyhow::Error::from)?;
            if !deleted {
                return Err(anyhow::anyhow!("no user {name:?}").into());
            }
            println!("deleted user {name}");
        }
        UserCommand::List => {
            let redis = connect(config).await?;
            for name in store.list(&redis).await.map_err(anyhow::Error::from)? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

/// The first line of stdin, without its line ending.
fn read_password() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("cannot read the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn token(args: TokenArgs, config: &Config, keys: Keys) -> Result<(), CliError> {
    let settings = config.validate().map_err(usage)?;
    let channels = split_list(&args.channels);
    let publish = split_list(&args.publish);
    if !users::valid_username(&args.user) {
        return Err(CliError::Usage(users::InvalidUser::Username.to_string()));
    }
    if let Some(p) = channels
        .iter()
        .chain(&publish)
        .find(|p| !users::valid_pattern(p))
    {
        return Err(CliError::Usage(format!("{p:?} is not a channel pattern")));
    }
    let ttl = args.ttl.unwrap_or(config.access_token_ttl_s);
    if ttl == 0 {
        return Err(CliError::Usage("--ttl must be at least 1".to_owned()));
    }
    let claims = access_claims(&config.jwt, &args.user, &channels, &publish, ttl);
    let token = if settings.alg == Alg::Hs256 {
        // No Redis needed with a shared secret.
        crate::signing::Signer::secret(settings.secret.as_deref().unwrap_or_default())
            .sign(&claims)
            .map_err(anyhow::Error::from)?
    } else {
        let redis = connect(config).await?;
        let (signer, store) = crate::signer(config, &settings, &redis, &keys).await?;
        let (token, kid) = signer.sign_with_kid(&claims).map_err(anyhow::Error::from)?;
        // The key must stay published for as long as this token lives, which
        // may be longer than any access token's.
        if let (Some(store), Some(kid)) = (store, kid) {
            store
                .record_expiry(&redis, &kid, claims.exp)
                .await
                .map_err(anyhow::Error::from)?;
        }
        token
    };
    println!("{token}");
    Ok(())
}

async fn rotate(config: &Config, keys: Keys) -> Result<(), CliError> {
    let settings = config.validate().map_err(usage)?;
    if settings.alg != Alg::EdDsa {
        return Err(CliError::Usage(
            "keys rotate needs HERALD_JWT_ALG=EdDSA".to_owned(),
        ));
    }
    let redis = connect(config).await?;
    let store = KeyStore::new(
        &keys,
        config.key_retention_ms(),
        config.jwt.jwt_leeway_s * 1000,
    );
    let kid = store.rotate(&redis).await.map_err(anyhow::Error::from)?;
    println!("{kid}");
    Ok(())
}
