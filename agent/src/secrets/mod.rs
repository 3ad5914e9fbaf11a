//! Secrets: `${NAME}` references in a recipe, resolved on the agent at task start from, in order, the
//! environment, a secrets directory (`NAME` files) and AWS Secrets Manager (`NAME=ARN` mappings and/or a name
//! prefix), with a short TTL cache so a rotated secret is used on the next run. Values leave this module only
//! through [`Secret::expose`], for the CLI's stdin envelope and the masker; `Debug` never shows them and
//! errors name the secret, never its value.

pub mod mask;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

pub use outpost_common::secret::Secret;

/// Resolved secrets by name.
pub type Secrets = BTreeMap<String, Secret>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("secret {} could not be resolved: not in the environment, the secrets directory or AWS Secrets Manager", .0.join(", "))]
    Missing(Vec<String>),
    #[error("secret {name} could not be read from {store}: {reason}")]
    Store { name: String, store: &'static str, reason: String },
}

/// Where secrets come from.
/// Where secrets come from (flags).
#[derive(Clone, Debug, Default, clap::Args)]
#[group(id = "secrets")]
#[command(next_help_heading = "Secrets")]
pub struct Config {
    /// A directory of secret files: `${NAME}` resolves to the content of NAME (trailing whitespace stripped).
    #[arg(id = "secrets_dir", long = "secrets-dir", env = "DATAHUB_EXECUTOR_FILE_SECRET_BASEDIR")]
    pub dir: Option<PathBuf>,
    /// Secret files larger than this are refused.
    #[arg(id = "secret_max_file_bytes", long = "secret-max-file-bytes", env = "DATAHUB_EXECUTOR_FILE_SECRET_MAXLEN",
          default_value_t = 1024 * 1024)]
    pub max_file_bytes: u64,
    /// A secret in AWS Secrets Manager, as NAME=ARN (or NAME=secret-name); repeatable.
    #[arg(id = "secret", long = "secret", env = "OUTPOST_SECRETS", value_delimiter = ',', value_parser = parse_mapping)]
    pub mappings: Vec<(String, String)>,
    /// Look names without a NAME=ARN mapping up in Secrets Manager as <prefix><NAME>.
    #[arg(id = "secret_prefix", long = "secret-prefix", env = "OUTPOST_SECRET_PREFIX")]
    pub prefix: Option<String>,
    /// How long a Secrets Manager value is reused before it is read again (rotation needs no restart).
    #[arg(id = "secret_cache_ttl", long = "secret-cache-ttl", env = "OUTPOST_SECRET_CACHE_TTL",
          value_parser = outpost_common::duration::parse, default_value = "60s")]
    pub cache_ttl: Duration,
    /// Secrets Manager endpoint override; otherwise the AWS default chain decides.
    #[arg(long, env = "OUTPOST_SECRETS_MANAGER_ENDPOINT")]
    pub secrets_manager_endpoint: Option<String>,
}

/// Why a `--secrets-manager-secret` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum BadMapping {
    #[error("{0:?} is not NAME=ARN")]
    NotPair(String),
    #[error("{0:?} is not a secret name (word characters only)")]
    Name(String),
    #[error("secret {0} has no ARN")]
    NoArn(String),
}

/// `NAME=ARN`.
fn parse_mapping(value: &str) -> Result<(String, String), BadMapping> {
    let (name, id) = value.split_once('=').ok_or_else(|| BadMapping::NotPair(value.to_owned()))?;
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(BadMapping::Name(name.to_owned()));
    }
    if id.is_empty() {
        return Err(BadMapping::NoArn(name.to_owned()));
    }
    Ok((name.to_owned(), id.to_owned()))
}

/// The names of `${NAME}` references (word characters only, as DataHub's executor resolves them).
pub fn references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    names.insert(name.to_owned());
                }
                rest = &after[end..];
            }
            None => break,
        }
    }
    names
}

/// Resolves secret names. Shared by every run of an agent.
pub struct Resolver {
    config: Config,
    /// `NAME` → Secrets Manager id (ARN or name).
    mappings: BTreeMap<String, String>,
    secrets_manager: Option<aws_sdk_secretsmanager::Client>,
    cache: Mutex<HashMap<String, (Instant, Secret)>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Resolver {
    /// `secrets_manager` is needed only when mappings or a prefix are configured.
    pub fn new(config: Config, secrets_manager: Option<aws_sdk_secretsmanager::Client>) -> Resolver {
        let mappings = config.mappings.iter().cloned().collect();
        Resolver { config, mappings, secrets_manager, cache: Mutex::new(HashMap::new()) }
    }

    pub fn uses_secrets_manager(config: &Config) -> bool {
        !config.mappings.is_empty() || config.prefix.is_some()
    }

    /// Resolves every name, or fails naming all the missing ones.
    pub async fn resolve(&self, names: &BTreeSet<String>) -> Result<Secrets, Error> {
        let mut secrets = Secrets::new();
        let mut missing = Vec::new();
        for name in names {
            match self.resolve_one(name).await? {
                Some(value) => {
                    secrets.insert(name.clone(), value);
                }
                None => missing.push(name.clone()),
            }
        }
        if missing.is_empty() { Ok(secrets) } else { Err(Error::Missing(missing)) }
    }

    async fn resolve_one(&self, name: &str) -> Result<Option<Secret>, Error> {
        if let Ok(value) = std::env::var(name) {
            debug!(secret = name, store = "environment", "secret resolved");
            return Ok(Some(Secret::new(value)));
        }
        if let Some(value) = self.read_dir_secret(name).await? {
            debug!(secret = name, store = "secrets directory", "secret resolved");
            return Ok(Some(value));
        }
        self.read_secrets_manager(name).await
    }

    async fn read_dir_secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        let Some(dir) = &self.config.dir else { return Ok(None) };
        let path = dir.join(name);
        let store_error =
            |reason: String| Error::Store { name: name.to_owned(), store: "the secrets directory", reason };
        let metadata = match tokio::fs::metadata(&path).await {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_error(e.to_string())),
        };
        if metadata.len() > self.config.max_file_bytes {
            return Err(store_error(format!(
                "the file is {} bytes, over {}",
                metadata.len(),
                self.config.max_file_bytes
            )));
        }
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| store_error(e.to_string()))?;
        Ok(Some(Secret::new(text.trim_end().to_owned())))
    }

    async fn read_secrets_manager(&self, name: &str) -> Result<Option<Secret>, Error> {
        let id = match (self.mappings.get(name), &self.config.prefix) {
            (Some(id), _) => id.clone(),
            (None, Some(prefix)) => format!("{prefix}{name}"),
            (None, None) => return Ok(None),
        };
        let Some(client) = &self.secrets_manager else { return Ok(None) };
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, value)) = cache.get(&id)
                && at.elapsed() < self.config.cache_ttl
            {
                return Ok(Some(value.clone()));
            }
        }
        let store_error = |reason: String| Error::Store { name: name.to_owned(), store: "AWS Secrets Manager", reason };
        let value = match client.get_secret_value().secret_id(&id).send().await {
            Ok(output) => match output.secret_string {
                Some(text) => Secret::new(text),
                None => return Err(store_error("the secret has no string value".into())),
            },
            Err(e) => {
                let service = e.into_service_error();
                if service.is_resource_not_found_exception() {
                    return Ok(None);
                }
                return Err(store_error(service.to_string()));
            }
        };
        debug!(secret = name, store = "AWS Secrets Manager", "secret resolved");
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (Instant::now(), value.clone()));
        Ok(Some(value))
    }
}

/// A Secrets Manager client from the default AWS chain, over rustls with ring.
pub async fn secrets_manager_client(endpoint: Option<&str>) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&outpost_common::aws::loader(endpoint).load().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_word_references_only() {
        let text = r#"{"password": "${DB_PW}", "host": "${HOST_1}:${PORT}", "other": "${not-a-name}", "x": "${}", "env": "${VAR:-default}", "open": "${UNCLOSED"}"#;
        let names: Vec<String> = references(text).into_iter().collect();
        assert_eq!(names, ["DB_PW", "HOST_1", "PORT"]);
    }

    #[tokio::test]
    async fn environment_then_directory_and_missing_names_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("FROM_FILE"), "file-value \n\n").unwrap();
        std::fs::write(dir.path().join("HUGE"), "x".repeat(100)).unwrap();
        let resolver =
            Resolver::new(Config { dir: Some(dir.path().to_owned()), max_file_bytes: 50, ..Config::default() }, None);
        let names: BTreeSet<String> = ["FROM_FILE".to_owned(), "PATH".to_owned()].into();
        let secrets = resolver.resolve(&names).await.unwrap();
        assert_eq!(secrets["FROM_FILE"].expose(), "file-value", "trailing whitespace stripped");
        assert_eq!(secrets["PATH"].expose(), std::env::var("PATH").unwrap());
        assert_eq!(format!("{:?}", secrets["FROM_FILE"]), "Secret(<redacted>)");

        let names: BTreeSet<String> = ["NOPE_1".to_owned(), "NOPE_2".to_owned()].into();
        let error = resolver.resolve(&names).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "secret NOPE_1, NOPE_2 could not be resolved: not in the environment, the secrets directory or AWS Secrets Manager"
        );
        let names: BTreeSet<String> = ["HUGE".to_owned()].into();
        assert_eq!(
            resolver.resolve(&names).await.unwrap_err().to_string(),
            "secret HUGE could not be read from the secrets directory: the file is 100 bytes, over 50"
        );
    }
}
