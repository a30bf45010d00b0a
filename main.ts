/**
 * moat's one entrypoint: picks the command, runs it from `cli/`, and turns
 * what it throws into an exit status. Nothing in lib/ prints or exits; only
 * `cli/` prints.
 *
 * @module
 */

import process from "node:process";
import { ExitCode, exitStatusOf, MoatError } from "./lib/errors.ts";
import {
  type Command,
  formatHelp,
  type RunContext,
  unknownWord,
} from "./cli/options.ts";
import { formatMainHelp, printVersion } from "./cli/help.ts";
import {
  printLine,
  printNote,
  STDOUT_CLOSED_EXIT,
  StdoutClosedError,
} from "./cli/output.ts";
import { SERVE, serveCommand } from "./cli/serve.ts";
import { GET, getCommand } from "./cli/get.ts";
import { CERT, certCommand } from "./cli/cert.ts";
import { CHAT, chatCommand } from "./cli/chat.ts";
import { SHIP, shipCommand } from "./cli/ship.ts";
import { VAULT, vaultCommand } from "./cli/vault.ts";
import { STATUS, statusCommand } from "./cli/status.ts";
import { VERIFY_PROOF, verifyProofCommand } from "./cli/verify_proof.ts";
import { WITNESS, witnessCommand } from "./cli/witness.ts";

// Set by `bun build --define` for release binaries.
declare const MOAT_TARGET: string | undefined;
const TARGET = typeof MOAT_TARGET === "string" ? MOAT_TARGET : "script";

/** Every command, in the order `moat --help` lists them. */
const COMMANDS: Record<string, Command> = {
  serve: { spec: SERVE, run: serveCommand },
  get: { spec: GET, run: getCommand },
  cert: { spec: CERT, run: certCommand },
  chat: { spec: CHAT, run: chatCommand },
  ship: { spec: SHIP, run: shipCommand },
  vault: { spec: VAULT, run: vaultCommand },
  status: { spec: STATUS, run: statusCommand },
  "verify-proof": { spec: VERIFY_PROOF, run: verifyProofCommand },
  witness: { spec: WITNESS, run: witnessCommand },
};

function commandNamed(name: string): Command {
  const command = COMMANDS[name];
  if (command !== undefined && Object.hasOwn(COMMANDS, name)) return command;
  throw unknownWord("command", name, {
    candidates: [...Object.keys(COMMANDS), "help"],
    see: "see moat help",
  });
}

async function main(argv: string[], context: RunContext): Promise<void> {
  const [name, ...rest] = argv;
  switch (name) {
    case undefined:
    case "help":
    case "-h":
    case "--help": {
      const topic = rest[0];
      if (topic === undefined || topic === "help") {
        return printLine(
          formatMainHelp(Object.values(COMMANDS).map((c) => c.spec)),
        );
      }
      return printLine(formatHelp(commandNamed(topic).spec));
    }
    case "-V":
    case "--version":
    case "version":
      return printVersion(context.target);
    default:
      return await commandNamed(name).run(rest, context);
  }
}

/** The exit status for what a command threw, after saying what it was. */
function exitFor(err: unknown): number {
  if (err instanceof StdoutClosedError) return STDOUT_CLOSED_EXIT;
  if (
    err instanceof MoatError || err instanceof RangeError ||
    err instanceof TypeError
  ) {
    printNote(err.message);
    // Coded RangeErrors and TypeErrors (a frame too large, a refused source
    // name) take their status from the one table of codes.
    return exitStatusOf(err);
  }
  printNote(
    `internal error: ${err instanceof Error ? err.message : String(err)}`,
  );
  return ExitCode.Failure;
}

try {
  await main(process.argv.slice(2), {
    env: process.env,
    target: TARGET,
    script: import.meta.filename ?? "main.ts",
  });
  process.exit(ExitCode.Ok);
} catch (err) {
  process.exit(exitFor(err));
}
