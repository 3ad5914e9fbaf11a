//! outpostctl's own documentation, generated from its clap definitions: shell completions (clap_complete) and man
//! pages (clap_mangen), so they never drift from the flags. Writes only where it is told; connects to nothing.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes the completion script for `shell` to `out`.
pub fn completion(shell: clap_complete::Shell, command: &mut clap::Command, out: &mut dyn Write) {
    clap_complete::generate(shell, command, "outpostctl", out);
}

/// Writes `outpostctl.1` and `outpostctl-<command>[-<subcommand>].1` for every command into `dir`; returns how many.
pub fn man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = command.version(env!("CARGO_PKG_VERSION"));
    let mut written = 0;
    write_pages(&command, "outpostctl", dir, &mut written)?;
    Ok(written)
}

fn write_pages(command: &clap::Command, name: &str, dir: &Path, written: &mut usize) -> anyhow::Result<()> {
    let page = command.clone().name(name.to_owned()).bin_name(name.replace('-', " "));
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text).context("rendering a man page")?;
    text.extend(environment(command).into_bytes());
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    *written += 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

/// An ENVIRONMENT section: the variables that stand in for flags (clap_mangen does not render them).
fn environment(command: &clap::Command) -> String {
    let escape = |text: &str| text.replace('\\', "\\\\").replace('-', "\\-");
    let mut section = String::new();
    for arg in command.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else { continue };
        if section.is_empty() {
            section.push_str(".SH ENVIRONMENT\n");
        }
        section.push_str(&format!(
            ".TP\n\\fB{}\\fR\nThe same as \\fB\\-\\-{}\\fR.\n",
            escape(&env.to_string_lossy()),
            escape(long)
        ));
    }
    section
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn completions_name_every_command_for_each_shell() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            completion(shell, &mut crate::Cli::command(), &mut out);
            let text = String::from_utf8(out).unwrap();
            for command in ["tasks", "workers", "submit", "doctor", "completion", "tokens"] {
                assert!(text.contains(command), "{shell}: no {command}");
            }
        }
    }

    #[test]
    fn a_man_page_per_command_with_its_flags() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(crate::Cli::command(), dir.path()).unwrap();
        let top = std::fs::read_to_string(dir.path().join("outpostctl.1")).unwrap();
        assert!(top.starts_with(".ie \\n(.g .ds Aq"), "roff: {}", &top[..80]);
        assert!(top.contains("\\-\\-controller") && top.contains("OUTPOST_CONTROLLER"), "{top}");
        let tasks = std::fs::read_to_string(dir.path().join("outpostctl-tasks.1")).unwrap();
        assert!(tasks.contains("\\-\\-state"), "{tasks}");
        let create = std::fs::read_to_string(dir.path().join("outpostctl-tokens-create.1")).unwrap();
        assert!(create.contains("\\-\\-pool"), "{create}");
        let pages = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(pages, written);
        assert!(written > 20, "{written} pages");
    }
}
