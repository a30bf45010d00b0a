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

// Set by `bun build --define` for release binaries.
declare const MOAT_TARGET: string | undefined;
const TARGET = typeof MOAT_TARGET === "string" ? MOAT_TARGET : "script";

/**
 * Every command, in the order `moat --help` lists them, each loaded only when
 * it runs: a command evaluates its own modules and the runtime's built-ins it
 * needs (node:tls, node:crypto, node:zlib… cost milliseconds each), not every
 * command's. `moat serve` reaches its listening socket that much sooner.
 */
const COMMANDS: Record<string, () => Promise<Command>> = {
  serve: async () => {
    const m = await import("./cli/serve.ts");
    return { spec: m.SERVE, run: m.serveCommand };
  },
  get: async () => {
    const m = await import("./cli/get.ts");
    return { spec: m.GET, run: m.getCommand };
  },
  cert: async () => {
    const m = await import("./cli/cert.ts");
    return { spec: m.CERT, run: m.certCommand };
  },
  chat: async () => {
    const m = await import("./cli/chat.ts");
    return { spec: m.CHAT, run: m.chatCommand };
  },
  ship: async () => {
    const m = await import("./cli/ship.ts");
    return { spec: m.SHIP, run: m.shipCommand };
  },
  vault: async () => {
    const m = await import("./cli/vault.ts");
    return { spec: m.VAULT, run: m.vaultCommand };
  },
  status: async () => {
    const m = await import("./cli/status.ts");
    return { spec: m.STATUS, run: m.statusCommand };
  },
  "verify-proof": async () => {
    const m = await import("./cli/verify_proof.ts");
    return { spec: m.VERIFY_PROOF, run: m.verifyProofCommand };
  },
  witness: async () => {
    const m = await import("./cli/witness.ts");
    return { spec: m.WITNESS, run: m.witnessCommand };
  },
};

function commandNamed(name: string): Promise<Command> {
  const load = COMMANDS[name];
  if (load !== undefined && Object.hasOwn(COMMANDS, name)) return load();
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
        const all = await Promise.all(Object.values(COMMANDS).map((c) => c()));
        return printLine(formatMainHelp(all.map((c) => c.spec)));
      }
      return printLine(formatHelp((await commandNamed(topic)).spec));
    }
    case "-V":
    case "--version":
    case "version":
      return printVersion(context.target);
    default:
      return await (await commandNamed(name)).run(rest, context);
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
