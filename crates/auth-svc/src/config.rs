//! auth-svc settings (`--flags` or `HERALD_*` variables) and its operator
//! subcommands, checked all at once before anything is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use herald_common::config::{CommonConfig, ConfigErrors};
use herald_common::jwt::{Alg, JwtConfig};
use herald_common::serve::Limits;

use crate::signing::Ed25519Key;
use crate::users::MAX_PASSWORD_LEN;

pub const ENV_LISTEN: &str = "HERALD_LISTEN";
/// The port of the HTTP API when `HERALD_LISTEN` is not set: on every interface,
/// or on loopback only in development mode.
pub const DEFAULT_PORT: u16 = 8081;
/// Access tokens live 15 minutes: short enough that revocation rarely matters.
pub const DEFAULT_ACCESS_TTL_S: u64 = 900;
/// Refresh tokens live 30 days (each use rotates them and restarts the clock).
pub const DEFAULT_REFRESH_TTL_S: u64 = 30 * 24 * 3600;
pub const DEFAULT_LOGIN_MAX_FAILURES_PER_USER: u64 = 5;
pub const DEFAULT_LOGIN_MAX_FAILURES_PER_IP: u64 = 50;
pub const DEFAULT_LOGIN_WINDOW_S: u64 = 15 * 60;
/// Shortest password accepted for a new user, in characters (NIST SP 800-63B's floor).
pub const DEFAULT_MIN_PASSWORD_LENGTH: usize = 8;

/// Why `HERALD_JWT_ALG=RS256` is refused, and what to do instead. auth-svc signs
/// asymmetric tokens with Ed25519 (small keys, fast to generate and rotate);
/// RS256 stays a gateway setting, for tokens from an external issuer.
pub const RS256_REFUSED: &str = "HERALD_JWT_ALG=RS256: auth-svc does not issue RS256 tokens; \
    use HERALD_JWT_ALG=EdDSA for asymmetric tokens from auth-svc \
    (RS256 is for gateways verifying another issuer's tokens through HERALD_JWKS_URL)";

/// The command line: settings plus an optional subcommand (none = serve).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "auth-svc",
    version = herald_common::VERSION,
    about = "Herald's token service",
    after_help = "Settings given as flags go before the subcommand \
                  (auth-svc --redis-url URL user list); HERALD_* variables work everywhere."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Everything the server reads.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub http: herald_common::serve::HttpArgs,
    #[command(flatten)]
    pub jwt: JwtConfig,
    /// Address the HTTP API listens on [default: 0.0.0.0:8081; 127.0.0.1:8081 with
    /// HERALD_DEV=1].
    #[arg(long, env = ENV_LISTEN)]
    pub listen: Option<SocketAddr>,
    /// Bearer key of the admin endpoints (users, revoke); none refuses them all.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Serve the admin endpoints (users, revoke) only on this address, e.g. a private
    /// interface; unset, they share the main listener.
    #[arg(long, env = "HERALD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Comma-separated exact origins of web pages allowed to log in and refresh from
    /// a browser (CORS on /v1/token and /v1/token/refresh); with HERALD_DEV=1 and no
    /// list, every origin.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "HERALD_ACCESS_TOKEN_TTL_S", default_value_t = DEFAULT_ACCESS_TTL_S)]
    pub access_token_ttl_s: u64,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "HERALD_REFRESH_TOKEN_TTL_S", default_value_t = DEFAULT_REFRESH_TTL_S)]
    pub refresh_token_ttl_s: u64,
    /// PKCS#8 PEM Ed25519 private key to sign with (EdDSA); without it a key is
    /// generated once and shared through Redis.
    #[arg(long, env = "HERALD_JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,
    /// Failed logins per username within the window before logins are refused.
    #[arg(long, env = "HERALD_LOGIN_MAX_FAILURES_PER_USER", default_value_t = DEFAULT_LOGIN_MAX_FAILURES_PER_USER)]
    pub login_max_failures_per_user: u64,
    /// Failed logins per client IP within the window before logins are refused.
    #[arg(long, env = "HERALD_LOGIN_MAX_FAILURES_PER_IP", default_value_t = DEFAULT_LOGIN_MAX_FAILURES_PER_IP)]
    pub login_max_failures_per_ip: u64,
    /// The login throttling window, in seconds.
    #[arg(long, env = "HERALD_LOGIN_WINDOW_S", default_value_t = DEFAULT_LOGIN_WINDOW_S)]
    pub login_window_s: u64,
    /// Shortest password, in characters, accepted for a new user (API and `user add`).
    #[arg(long, env = "HERALD_MIN_PASSWORD_LENGTH", default_value_t = DEFAULT_MIN_PASSWORD_LENGTH)]
    pub min_password_length: usize,
}

/// Operator subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Mint an access token and print it on stdout (for scripts and tests).
    Token(TokenArgs),
    /// Manage signing keys (asymmetric modes).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add {
        name: String,
        /// The password; `-` reads it from the first line of stdin, which keeps
        /// it out of the process list and shell history.
        #[arg(long, env = "HERALD_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// Comma-separated channel patterns the user may subscribe to.
        #[arg(long, default_value = "")]
        channels: String,
        /// Comma-separated channel patterns the user may publish to.
        #[arg(long, default_value = "")]
        publish: String,
    },
    /// Delete a user.
    Del { name: String },
    /// List user names, one per line.
    List,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The token's subject.
    #[arg(long)]
    pub user: String,
    /// Comma-separated channel patterns.
    #[arg(long, default_value = "")]
    pub channels: String,
    /// Comma-separated publish patterns.
    #[arg(long, default_value = "")]
    pub publish: String,
    /// Lifetime in seconds (default: the access-token TTL).
    #[arg(long)]
    pub ttl: Option<u64>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Add a new current signing key; the previous one stays published until
    /// its tokens have expired.
    Rotate,
}

/// The checked parts of [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where the admin endpoints are served, when not on the main listener.
    pub admin_listen: Option<SocketAddr>,
    pub alg: Alg,
    /// The HS256 secret (HS256 only).
    pub secret: Option<String>,
    /// The key of `HERALD_JWT_PRIVATE_KEY_FILE`, parsed.
    pub key_file: Option<Arc<Ed25519Key>>,
    /// Exact origins allowed to log in from a browser (trimmed, no trailing `/`).
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
}

/// What the command line asks for, checked.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Serve, with these settings.
    Serve(Box<Settings>),
    /// Run one operator subcommand.
    Command(Command),
}

impl Cli {
    /// Checks what the command needs: every setting to serve, only the shared ones
    /// for an operator subcommand (which checks the rest it uses itself).
    pub fn validate(&self) -> Result<Mode, ConfigErrors> {
        match &self.command {
            None | Some(Command::Serve) => self.config.validate().map(|s| Mode::Serve(Box::new(s))),
            Some(command) => {
                let mut out = ConfigErrors::new();
                self.config.common.check(&mut out);
                out.or(|| Mode::Command(command.clone()))
            }
        }
    }
}

impl Config {
    /// Checks every setting that serving or signing needs, reporting all
    /// problems at once.
    pub fn validate(&self) -> Result<Settings, ConfigErrors> {
        let (mut problems, listen) = self
            .common
            .check_http(&self.http, self.listen, DEFAULT_PORT);
        let admin_listen = self.admin_listen;
        let (alg, secret) = self.jwt.resolve(self.common.dev, &mut problems);
        if alg == Alg::Rs256 {
            problems.push(RS256_REFUSED);
        }
        let key_file = match &self.jwt_private_key_file {
            Some(_) if alg != Alg::EdDsa => {
                problems.push("HERALD_JWT_PRIVATE_KEY_FILE needs HERALD_JWT_ALG=EdDSA");
                None
            }
            Some(path) => match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| Ed25519Key::from_pem(&pem).map_err(|e| e.to_string()))
            {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    problems.push(format!(
                        "HERALD_JWT_PRIVATE_KEY_FILE {}: {e}",
                        path.display()
                    ));
                    None
                }
            },
            None => None,
        };
        if self.access_token_ttl_s == 0 {
            problems.push("HERALD_ACCESS_TOKEN_TTL_S must be at least 1");
        }
        if self.refresh_token_ttl_s == 0 {
            problems.push("HERALD_REFRESH_TOKEN_TTL_S must be at least 1");
        }
        if self.login_max_failures_per_user == 0 || self.login_max_failures_per_ip == 0 {
            problems.push("HERALD_LOGIN_MAX_FAILURES_PER_USER/_PER_IP must be at least 1");
        }
        if self.login_window_s == 0 {
            problems.push("HERALD_LOGIN_WINDOW_S must be at least 1");
        }
        if self.min_password_length == 0 || self.min_password_length > MAX_PASSWORD_LEN {
            problems.push(format!(
                "HERALD_MIN_PASSWORD_LENGTH must be 1-{MAX_PASSWORD_LEN}"
            ));
        }
        if let Some(k) = &self.admin_key
            && k.is_empty()
        {
            problems.push("HERALD_ADMIN_KEY is set but empty");
        }
        problems.or(|| Settings {
            listen,
            admin_listen,
            alg,
            secret,
            key_file,
            allowed_origins: self
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            limits: self.http.limits(),
        })
    }

    /// The least time a rotated-out signing key stays published: every access
    /// token it signed has expired by then, leeway included. Tokens signed with a
    /// longer life (`auth-svc token --ttl`) keep it published longer: see
    /// [`crate::signing::KeyStore::record_expiry`].
    pub fn key_retention_ms(&self) -> u64 {
        (self.access_token_ttl_s + self.jwt.jwt_leeway_s) * 1000
    }
}

/// Splits a comma-separated list, dropping blanks.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut all = vec!["auth-svc"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--jwt-secret", "0123456789abcdef"]);
        let c = &cli.config;
        assert_eq!(c.listen, None);
        assert_eq!(c.access_token_ttl_s, 900);
        assert_eq!(c.refresh_token_ttl_s, 30 * 24 * 3600);
        assert_eq!(c.login_max_failures_per_user, 5);
        assert_eq!(c.login_max_failures_per_ip, 50);
        assert_eq!(c.login_window_s, 900);
        assert_eq!(c.min_password_length, 8);
        let s = c.validate().unwrap();
        assert_eq!(s.alg, Alg::Hs256);
        assert_eq!(s.listen, "0.0.0.0:8081".parse().unwrap());
        // Development mode listens on loopback unless told otherwise.
        let dev = parse(&["--dev"]).config.validate().unwrap();
        assert_eq!(dev.listen, "127.0.0.1:8081".parse().unwrap());
        assert!(cli.command.is_none());
    }

    #[test]
    fn problems_are_all_reported() {
        let cli = parse(&["--access-token-ttl-s", "0"]);
        let problems = cli.config.validate().unwrap_err();
        // No secret, zero TTL.
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn rs256_and_password_length_are_checked() {
        let cli = parse(&["--jwt-alg", "RS256", "--min-password-length", "0"]);
        let problems = cli.config.validate().unwrap_err();
        let problems = problems.lines();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0], RS256_REFUSED);
        assert!(problems[0].contains("EdDSA") && problems[0].contains("HERALD_JWKS_URL"));
        assert!(problems[1].contains("HERALD_MIN_PASSWORD_LENGTH"));
    }

    #[test]
    fn subcommands() {
        let cli = parse(&[
            "user",
            "add",
            "alice",
            "--password",
            "pw",
            "--channels",
            "news, chat:*",
        ]);
        let Some(Command::User(UserCommand::Add { name, channels, .. })) = cli.command else {
            panic!("not user add");
        };
        assert_eq!(name, "alice");
        assert_eq!(split_list(&channels), ["news", "chat:*"]);
        let cli = parse(&["token", "--user", "u1", "--ttl", "60"]);
        assert!(matches!(
            cli.command,
            Some(Command::Token(TokenArgs { ttl: Some(60), .. }))
        ));
        let cli = parse(&["keys", "rotate"]);
        assert!(matches!(
            cli.command,
            Some(Command::Keys(KeysCommand::Rotate))
        ));
    }
}
