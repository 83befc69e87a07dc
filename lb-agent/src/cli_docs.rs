//! Shell completions and man pages, generated from the CLI's own clap
//! definition so they never drift from it. `lb-agent generate` (hidden)
//! prints them; `cargo xtask dist` puts them in the Debian package.

use std::{io::Write, path::PathBuf};

use anyhow::{Context as _, Result};
use clap_complete::Shell;

/// What `lb-agent generate` writes.
#[derive(clap::Subcommand)]
pub enum Generate {
    /// Print the completion script for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write one man page (section 1) per command into DIR: lb-agent.1,
    /// lb-agent-run.1, ... (hidden commands have none); print their paths.
    Man {
        dir: PathBuf,
        /// The pages' date (YYYY-MM-DD), e.g. the release commit's.
        #[arg(long)]
        date: String,
    },
}

/// Writes `what` for `cli`, the binary's top-level command.
pub fn generate(cli: clap::Command, what: &Generate, out: &mut dyn Write) -> Result<()> {
    match what {
        Generate::Completions { shell } => {
            let name = cli.get_name().to_owned();
            clap_complete::generate(*shell, &mut without_hidden_commands(&cli), name, out);
            Ok(())
        }
        Generate::Man { dir, date } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // Every page's footer names the program and its version (subcommands have no version of their own).
            let source = format!("{} {}", cli.get_name(), cli.get_version().unwrap_or_default());
            // No page for `help`; build() gives subcommands their display names (lb-agent-run).
            let mut cli = cli.disable_help_subcommand(true);
            cli.build();
            man_pages(&cli, &Footer { date, source: &source }, dir).with_context(|| format!("writing the man pages into {}", dir.display()))?;
            let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "1"))
                .collect();
            pages.sort();
            for page in pages {
                writeln!(out, "{}", page.display())?;
            }
            Ok(())
        }
    }
}

/// `cli` less its hidden subcommands, which clap_complete would offer (it
/// skips only hidden arguments and values).
fn without_hidden_commands(cli: &clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(cli.get_name().to_owned())
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(version) = cli.get_version() {
        visible = visible.version(version.to_owned());
    }
    visible
}

/// What every page's title line carries besides its name (`.TH` takes them
/// by position, so none may be empty).
struct Footer<'a> {
    date: &'a str,
    source: &'a str,
}

/// The page of `cmd` and of each visible subcommand, recursively.
fn man_pages(cmd: &clap::Command, footer: &Footer, dir: &std::path::Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, footer, dir)?;
    }
    clap_mangen::Man::new(cmd.clone())
        .date(footer.date.to_owned())
        .source(footer.source.to_owned())
        .manual("lb-agent manual")
        .generate_to(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CLI shaped like lb-agent's: subcommands, one of them hidden.
    fn cli() -> clap::Command {
        clap::Command::new("lb-agent")
            .version("1.2.3")
            .about("test CLI")
            .subcommand(clap::Command::new("run").about("run it").arg(clap::Arg::new("full-restart").long("full-restart")))
            .subcommand(clap::Command::new("check").about("check it"))
            .subcommand(clap::Command::new("generate").hide(true))
    }

    #[test]
    fn one_man_page_per_visible_command() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let mut listed = Vec::new();
        generate(cli(), &Generate::Man { dir: dir.clone(), date: "2026-12-03".into() }, &mut listed).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["lb-agent-check.1", "lb-agent-run.1", "lb-agent.1"]);
        assert_eq!(String::from_utf8(listed).unwrap().lines().count(), 3);
        let run = std::fs::read_to_string(dir.join("lb-agent-run.1")).unwrap();
        assert!(run.contains(".TH lb-agent-run 1 2026-12-03 \"lb-agent 1.2.3\" \"lb-agent manual\""), "{run}");
        assert!(run.contains("full\\-restart"), "{run}");
    }

    #[test]
    fn completions_name_the_visible_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            generate(cli(), &Generate::Completions { shell }, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("lb-agent") && text.contains("check") && text.contains("full-restart"), "{shell}: {text}");
            assert!(!text.contains("generate"), "{shell} offers the hidden command: {text}");
        }
    }
}
