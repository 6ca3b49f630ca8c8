//! `recap completions` and `recap man`: shell completions and man pages generated from the
//! same clap definitions that parse the command line, so they cannot drift from it.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use clap_complete::Shell;

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  recap completions bash > ~/.local/share/bash-completion/completions/recap
  recap completions zsh > \"${fpath[1]}/_recap\"
  recap completions fish > ~/.config/fish/completions/recap.fish";

const MAN_EXAMPLES: &str = "\
Examples:
  recap man | man -l -                   # read it now
  recap man --dir /usr/local/share/man/man1   # recap.1 and a page per command (recap-post.1, ...)";

/// `recap completions`.
#[derive(Args, Clone, Debug)]
#[command(after_help = COMPLETIONS_EXAMPLES)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `recap man`.
#[derive(Args, Clone, Debug)]
#[command(after_help = MAN_EXAMPLES)]
pub struct ManArgs {
    /// Write recap.1 and one page per command into this directory instead of printing recap.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Writes the completion script of `command` for `shell`.
pub fn completions(
    shell: Shell,
    command: &mut clap::Command,
    out: &mut impl Write,
) -> std::io::Result<()> {
    // Built in memory first: clap_complete panics if its writer fails (`| head`).
    let mut script = Vec::new();
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, command, name, &mut script);
    out.write_all(&script)?;
    out.flush()
}

/// Writes the man page of `command` to `out`, or every page (recap.1, recap-post.1,
/// recap-notes-add.1, ...) into `args.dir`.
pub fn man(args: &ManArgs, command: clap::Command, out: &mut impl Write) -> std::io::Result<()> {
    match &args.dir {
        None => clap_mangen::Man::new(command).render(out),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(command, dir)
        }
    }
}
