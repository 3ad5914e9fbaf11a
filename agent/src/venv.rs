//! Which `datahub` runs a task: `version: native` (or no `--venv-root`) is the CLI on PATH / `--datahub-cli`; a
//! pinned version gets a cached virtualenv `<venv-root>/<plugin>-<hash(version, requirements, plugins)>` with
//! `acryl-datahub[<plugin>,...]==<version>`, built once (one builder per venv at a time), with `uv` when it is on
//! PATH, else `python -m venv` + pip. A failed build fails the task with the installer's output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::process::Command;
use tracing::info;

/// What a task asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `None` or `native`: the agent's own CLI.
    pub version: Option<String>,
    /// The recipe's source type (`mysql`, `file`, ...): the acryl-datahub extra to install.
    pub plugin: String,
    pub extra_requirements: Vec<String>,
    pub extra_plugins: Vec<String>,
}

/// Chooses (and builds) virtualenvs.
#[derive(Debug)]
pub struct Venvs {
    /// The CLI used for `native`.
    pub native_cli: PathBuf,
    pub root: Option<PathBuf>,
    /// The interpreter new venvs are made from.
    pub python: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Which `datahub` runs (flags).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "venvs")]
#[command(next_help_heading = "DataHub CLI")]
pub struct Args {
    /// The `datahub` executable (default: `datahub` on PATH).
    #[arg(long, env = "OUTPOST_DATAHUB_CLI", default_value = "datahub")]
    pub datahub_cli: PathBuf,
    /// Where per-version virtualenvs are built and cached; without it every task uses --datahub-cli.
    #[arg(long, env = "OUTPOST_VENV_ROOT")]
    pub venv_root: Option<PathBuf>,
    /// The Python interpreter new virtualenvs are made from.
    #[arg(long, env = "OUTPOST_VENV_PYTHON", default_value = "python3")]
    pub venv_python: PathBuf,
}

/// Written into a venv once its build finished.
const READY_MARKER: &str = ".outpost-ready";

/// FNV-1a, 64 bits: a stable name for a venv's contents (not a security hash).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Characters allowed in a venv directory name.
fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

impl Request {
    pub fn is_native(&self) -> bool {
        self.version.as_deref().is_none_or(|v| v.is_empty() || v == "native")
    }

    /// `<plugin>-<16 hex digits>`.
    pub fn venv_name(&self) -> String {
        let version = self.version.as_deref().unwrap_or("");
        let requirements = self.extra_requirements.join("\n");
        let plugins = self.extra_plugins.join(",");
        format!("{}-{:016x}", sanitize(&self.plugin), fnv1a(&[version, &requirements, &plugins]))
    }

    /// The pip requirement for acryl-datahub with the extras the recipe needs.
    pub fn datahub_requirement(&self) -> String {
        let mut extras = vec![self.plugin.clone()];
        extras.extend(self.extra_plugins.iter().cloned());
        let extras = extras.join(",");
        match self.version.as_deref() {
            Some("latest") | None => format!("acryl-datahub[{extras}]"),
            Some(version) => format!("acryl-datahub[{extras}]=={}", version.trim_start_matches('v')),
        }
    }
}

impl Venvs {
    pub fn new(args: Args) -> Venvs {
        Venvs {
            native_cli: args.datahub_cli,
            root: args.venv_root,
            python: args.venv_python,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The `datahub` executable for a request, building its venv if needed. `note` receives progress lines for
    /// the task's log; the error is the installer's output.
    pub async fn cli_for(&self, request: &Request, note: &mut (dyn FnMut(String) + Send)) -> Result<PathBuf, String> {
        let Some(root) = &self.root else { return Ok(self.native_cli.clone()) };
        if request.is_native() {
            return Ok(self.native_cli.clone());
        }
        let name = request.venv_name();
        let dir = root.join(&name);
        let cli = dir.join("bin").join("datahub");
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(name.clone()).or_default().clone()
        };
        let _building = lock.lock().await;
        // Built in place (venv scripts hold absolute paths); the marker says the build finished.
        let ready = dir.join(READY_MARKER);
        if tokio::fs::try_exists(&ready).await.unwrap_or(false) {
            note(format!("Using the cached venv {name} for plugin '{}'", request.plugin));
            return Ok(cli);
        }
        note(format!(
            "Setting up venv for plugin '{}' with version '{}' in {}",
            request.plugin,
            request.version.as_deref().unwrap_or("latest"),
            dir.display()
        ));
        info!(venv = %dir.display(), requirement = %request.datahub_requirement(), "building virtualenv");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(root).await.map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let built = self.build(request, &dir, note).await;
        if let Err(e) = built {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        tokio::fs::write(&ready, request.datahub_requirement())
            .await
            .map_err(|e| format!("cannot mark the venv ready: {e}"))?;
        note(format!("Venv ready at: {}", dir.display()));
        Ok(cli)
    }

    async fn build(&self, request: &Request, dir: &Path, note: &mut (dyn FnMut(String) + Send)) -> Result<(), String> {
        let uv = which("uv");
        let python_in_venv = dir.join("bin").join("python");
        let mut install: Vec<String> = vec![request.datahub_requirement()];
        install.extend(request.extra_requirements.iter().cloned());
        match &uv {
            Some(uv) => {
                let venv_args = vec!["venv".to_owned(), "--python".to_owned(), path_text(&self.python), path_text(dir)];
                run(uv, &venv_args, note).await?;
                let mut args =
                    vec!["pip".to_owned(), "install".to_owned(), "--python".to_owned(), path_text(&python_in_venv)];
                args.extend(install);
                run(uv, &args, note).await
            }
            None => {
                let venv_args = vec!["-m".to_owned(), "venv".to_owned(), path_text(dir)];
                run(&self.python, &venv_args, note).await?;
                let mut args = vec![
                    "-m".to_owned(),
                    "pip".to_owned(),
                    "install".to_owned(),
                    "--quiet".to_owned(),
                    "--disable-pip-version-check".to_owned(),
                ];
                args.extend(install);
                run(&python_in_venv, &args, note).await
            }
        }
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// An executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

/// Runs an installer step; on failure the error is the tail of its output.
async fn run(program: &Path, args: &[String], note: &mut (dyn FnMut(String) + Send)) -> Result<(), String> {
    note(format!("Running: {} {}", program.display(), args.join(" ")));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    for line in text.lines() {
        note(line.to_owned());
    }
    if output.status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    Err(format!(
        "Failed to set up virtual environment: {} exited with {}:\n{}",
        program.display(),
        output.status,
        tail.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Option<&str>, plugins: &[&str]) -> Request {
        Request {
            version: version.map(str::to_owned),
            plugin: "mysql".into(),
            extra_requirements: vec![],
            extra_plugins: plugins.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn names_and_requirements() {
        assert!(request(None, &[]).is_native());
        assert!(request(Some("native"), &[]).is_native());
        let pinned = request(Some("v1.7.0.17"), &["sql-queries"]);
        assert!(!pinned.is_native());
        assert_eq!(pinned.datahub_requirement(), "acryl-datahub[mysql,sql-queries]==1.7.0.17");
        assert_eq!(request(Some("latest"), &[]).datahub_requirement(), "acryl-datahub[mysql]");
        let name = pinned.venv_name();
        assert!(name.starts_with("mysql-") && name.len() == "mysql-".len() + 16, "{name}");
        assert_eq!(name, request(Some("v1.7.0.17"), &["sql-queries"]).venv_name(), "stable");
        assert_ne!(name, request(Some("v1.7.0.16"), &["sql-queries"]).venv_name());
        assert_ne!(name, request(Some("v1.7.0.17"), &[]).venv_name());
    }

    #[tokio::test]
    async fn native_needs_no_build() {
        let venvs = Venvs::new(Args {
            datahub_cli: "/opt/datahub".into(),
            venv_root: Some("/nonexistent".into()),
            venv_python: "python3".into(),
        });
        let mut notes = Vec::new();
        let cli = venvs.cli_for(&request(Some("native"), &[]), &mut |line| notes.push(line)).await.unwrap();
        assert_eq!(cli, PathBuf::from("/opt/datahub"));
        assert!(notes.is_empty());
    }
}
