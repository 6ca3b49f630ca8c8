//! `recap mcp` and `recap hook`: the commands agents run, rather than people.

use std::io::{Read, Write};

use clap::Args;

use crate::client::{self, ClientError};
use crate::event::StreamName;

use super::args::{self, ServerArgs};

const MCP_EXAMPLES: &str = "\
Examples:
  claude mcp add recap -- recap mcp --server http://127.0.0.1:7070
  RECAP_URL=http://127.0.0.1:7070 RECAP_KEY=... recap mcp

Tools: get_context, log_event, remember, forget, list_streams, get_events; each stream's window
is also the resource recap://streams/{name}/context, which a client can subscribe to
(subscriptions/listen, or resources/subscribe in the older revisions). Logs go to stderr.";

const HOOK_EXAMPLES: &str = "\
Examples:
  recap hook --stream demo < event.json
  RECAP_STREAM=demo recap hook --budget 1500     # as a Claude Code or Codex hook command

Posts the hook event to the stream; for SessionStart (including after a compaction) and
UserPromptSubmit it prints the context window as hookSpecificOutput.additionalContext, which
both agents add to the model's context.";

/// `recap mcp`.
#[derive(Args, Clone, Debug)]
#[command(after_help = MCP_EXAMPLES)]
pub struct McpArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `recap hook`.
#[derive(Args, Clone, Debug)]
#[command(after_help = HOOK_EXAMPLES)]
pub struct HookArgs {
    /// How to reach the server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The stream the agent's events go to.
    #[arg(long, env = "RECAP_STREAM", value_parser = args::stream)]
    pub stream: StreamName,
    /// Token budget of the context window printed [default: 2000, the server's].
    #[arg(long, value_parser = args::budget, allow_negative_numbers = true, value_name = "TOKENS")]
    pub budget: Option<u32>,
}

/// Speaks MCP on stdin/stdout until stdin closes.
pub async fn mcp(args: McpArgs) -> Result<(), ClientError> {
    client::mcp::serve_stdio(args.server.connect()?).await
}

/// Posts the hook event read from stdin; prints what the agent should read.
pub async fn hook(args: HookArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let client = args.server.connect()?;
    let mut input = String::new();
    std::io::stdin()
        .lock()
        .read_to_string(&mut input)
        .map_err(|error| ClientError::Io {
            path: "stdin".into(),
            source: error,
        })?;
    let output = client::hook::run(&client, &args.stream, &input, args.budget).await?;
    out.write_all(output.as_bytes())
        .map_err(ClientError::Output)?;
    if !output.is_empty() && !output.ends_with('\n') {
        writeln!(out).map_err(ClientError::Output)?;
    }
    Ok(())
}
