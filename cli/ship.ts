/**
 * `moat ship`: stream log files (or stdin) to a server's vault, reporting
 * connections, spool pressure and rotations on stderr.
 *
 * @module
 */

import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { ExitCode, UsageError } from "../lib/errors.ts";
import { ship, type ShipperEvent } from "../lib/ship/shipper.ts";
import { DEFAULT_SPOOL_BYTES } from "../lib/ship/spool.ts";
import { defaultStatePath } from "../lib/ship/state.ts";
import { escapeText } from "../lib/text.ts";
import {
  clientOptions,
  SERVER_OPTION,
  serverAddr,
  TIMEOUT_OPTION,
} from "./_client.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  formatHelp,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine, printNote } from "./output.ts";
import { CLIENT_SECURITY_ENV, CLIENT_SECURITY_OPTIONS } from "./secure_cli.ts";

/** The smallest --spool-size: room for at least a MiB of lines. */
const MIN_SPOOL_BYTES = 1 << 20;

const SHIP_OPTIONS = {
  server: SERVER_OPTION,
  source: {
    type: "string",
    placeholder: "NAME",
    description: "Name of this log stream in the vault",
    defaultText: "this host's name",
  },
  state: {
    type: "string",
    placeholder: "FILE",
    description: "Position and spool",
    defaultText: "$XDG_STATE_HOME/moat/…, else ~/.local/state/moat/…",
  },
  "spool-size": {
    type: "integer",
    placeholder: "BYTES",
    min: MIN_SPOOL_BYTES,
    default: DEFAULT_SPOOL_BYTES,
    description: "Bound on the spool; when full, reading pauses, loudly",
  },
  timeout: TIMEOUT_OPTION,
  ...CLIENT_SECURITY_OPTIONS,
} as const satisfies OptionTable;

/** `moat ship`'s options, usage and help. */
export const SHIP: CommandSpec<typeof SHIP_OPTIONS> = {
  name: "ship",
  summary: "Stream log files (or stdin) to a server's vault; lose nothing",
  usage: ["ship [options] FILE... | -"],
  description:
    `Follow each FILE like tail -F (survives rotation by rename and truncation,
waits for a file that does not exist yet), or read stdin with "-", and stream
every line to the server's vault. Each line gets a sequence number; the server
acknowledges only what it has fsync'd, and the shipper keeps everything else
in an on-disk spool and resends it after a reconnect. A restarted shipper
continues exactly where it stopped. With "-", moat exits once every line was
acknowledged.`,
  positionals: true,
  options: SHIP_OPTIONS,
  env: [
    {
      name: "XDG_STATE_HOME",
      description: "Where the default --state file is kept (its moat folder)",
    },
    {
      name: "HOME",
      description:
        "Without $XDG_STATE_HOME: the state is in ~/.local/state/moat; known_hosts in ~/.config/moat",
    },
    ...CLIENT_SECURITY_ENV,
  ],
  exits: [
    ...COMMON_EXITS,
    {
      code: ExitCode.AccessDenied,
      description:
        "the server refused this client (allowlist, token, certificate)",
    },
  ],
  notes:
    "A lost connection is retried for ever, with the lines kept in the spool.",
};

/**
 * Runs `moat ship`: with "-" until stdin is acknowledged, with files until a
 * signal.
 *
 * @param args The arguments after "ship".
 * @param context The environment.
 * @throws {MoatError} With the exit status of what went wrong.
 */
export async function shipCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(SHIP, args, context);
  if (parsed.help) return printLine(formatHelp(SHIP));
  const { values, positionals } = parsed;
  if (positionals.length === 0) {
    throw new UsageError("ship needs FILE... or - (see moat ship --help)");
  }
  if (positionals.includes("-") && positionals.length > 1) {
    throw new UsageError('ship reads either files or stdin ("-"), not both');
  }
  const server = serverAddr(values.server);
  const source = values.source ?? os.hostname();
  const inputs = positionals.map((p) => (p === "-" ? p : path.resolve(p)));
  const statePath = values.state ??
    defaultStatePath({
      source,
      server: `${server.hostname}:${server.port}`,
      env: context.env,
    });
  const stop = new AbortController();
  process.on("SIGINT", () => stop.abort());
  process.on("SIGTERM", () => stop.abort());
  const last = await ship({
    client: clientOptions(values, context.env),
    inputs,
    stdin: process.stdin as AsyncIterable<Uint8Array>,
    statePath,
    source,
    spoolBytes: values["spool-size"],
    signal: stop.signal,
    onEvent: printShipEvent,
  });
  printNote(`${last} records acknowledged by the server`);
}

/** Reports what the shipper does on stderr. */
function printShipEvent(e: ShipperEvent): void {
  switch (e.type) {
    case "connected":
      printNote(
        `shipping "${
          escapeText(e.source)
        }" to ${e.server} as ${e.peer}; server holds ${e.lastSeq} records`,
      );
      break;
    case "disconnected":
      printNote(
        `${e.message}; retrying in ${
          (e.retryMs / 1000).toFixed(1)
        } s (lines are kept in the spool)`,
      );
      break;
    case "spool":
      if (e.event.type === "full") {
        printNote(
          `SPOOL FULL (${e.event.usedBytes} of ${e.event.maxBytes} bytes): reading is paused until the server acknowledges; no line is dropped`,
        );
      } else if (e.event.type === "resumed") {
        printNote("spool has room again; reading resumed");
      } else if (e.event.type === "checkpoint_failed") {
        printNote(
          `cannot save the shipper state: ${
            (e.event.error as Error)?.message ?? e.event.error
          }`,
        );
      } else {
        printNote(`spool repaired after a crash: ${JSON.stringify(e.event)}`);
      }
      break;
    case "follow":
      if (e.event.type === "skipped") {
        printNote(
          `WARNING: ${e.event.path} rotated twice before it was read; not shipped: ${
            e.event.files.join(", ")
          }`,
        );
      } else if (
        e.event.type === "rotated" || e.event.type === "truncated" ||
        e.event.type === "waiting"
      ) {
        printNote(`${escapeText(e.event.path)} ${e.event.type}`);
      }
      break;
    case "done":
      break;
  }
}
