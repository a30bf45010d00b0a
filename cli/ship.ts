/**
 * `moat ship`: stream log files (or stdin) to a server's vault, each file as
 * a source of its own, reporting connections, backlog, spool pressure and
 * rotations on stderr; or print a systemd unit that does.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { ExitCode, MoatError, UsageError } from "../lib/errors.ts";
import { runtimeInfo } from "../lib/net/mod.ts";
import { ShipBacklog } from "../lib/ship/backlog.ts";
import type { FilePosition } from "../lib/ship/follow.ts";
import { ship, type ShipperEvent } from "../lib/ship/shipper.ts";
import {
  type InputSpec,
  MAX_CONFIG_BYTES,
  parseInputArg,
  parseShipConfig,
  planSources,
  type ShipSource,
} from "../lib/ship/sources.ts";
import { DEFAULT_SPOOL_BYTES } from "../lib/ship/spool.ts";
import { defaultStatePath } from "../lib/ship/state.ts";
import { readTakeover } from "../lib/ship/takeover.ts";
import { renderShipUnit } from "../lib/systemd/mod.ts";
import { escapeText } from "../lib/text.ts";
import { VERSION } from "../lib/version.ts";
import { doorText, parseDoors } from "../lib/ship/doors.ts";
import { DEFAULT_PORT } from "../lib/limits.ts";
import type { ServerAddr } from "../lib/client.ts";
import {
  clientOptions,
  DEFAULT_SERVER,
  SERVER_OPTION,
  TIMEOUT_OPTION,
} from "./_client.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  describeFsError,
  formatHelp,
  type GivenOption,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine, printNote, writeStdoutText } from "./output.ts";
import { formatBytes } from "./progress.ts";
import { CLIENT_SECURITY_ENV, CLIENT_SECURITY_OPTIONS } from "./secure_cli.ts";
import { dns, os } from "../lib/builtins.ts";

/** The most --audit-every allows: ten a second. */
const MAX_AUDITS_PER_MINUTE = 600;
/** The smallest --spool-size: room for at least a MiB of lines. */
const MIN_SPOOL_BYTES = 1 << 20;
/** Most status line redraws per second on a terminal. */
const STATUS_PER_SECOND = 4;
/** The acknowledged-lines rate is averaged over this long. */
const RATE_WINDOW_MS = 5000;

const SHIP_OPTIONS = {
  server: {
    ...SERVER_OPTION,
    placeholder: "HOST[:PORT][,…]",
    description:
      `Front door of the vault: HOST, HOST:PORT or [IPV6]:PORT (the port defaults to ${DEFAULT_PORT}); several, comma-separated or repeated, are front doors of one vault, tried in order when one fails`,
    multiple: true,
    defaultText: DEFAULT_SERVER,
  },
  source: {
    type: "string",
    placeholder: "NAME",
    description:
      "Name of the one input given without =NAME (with several inputs, name each as FILE=NAME)",
    defaultText: "a file's name without .log; for -, this host's name",
  },
  config: {
    type: "file",
    placeholder: "FILE",
    description:
      "Also ship the inputs in FILE: one PATH or PATH=NAME per line, # comments; relative paths are from FILE's folder",
  },
  state: {
    type: "string",
    placeholder: "FILE",
    description: "Position and spool of the one source shipped",
    defaultText: "ship-SOURCE-HASH.json in --state-dir",
  },
  "state-dir": {
    type: "string",
    placeholder: "DIR",
    description: "Keep each source's position and spool in DIR",
    defaultText: "$XDG_STATE_HOME/moat, else ~/.local/state/moat",
  },
  "spool-size": {
    type: "integer",
    placeholder: "BYTES",
    min: MIN_SPOOL_BYTES,
    default: DEFAULT_SPOOL_BYTES,
    description:
      "Bound on each source's spool; when full, reading pauses, loudly",
  },
  "vault-key": {
    type: "string",
    placeholder: "KEY",
    description:
      "The vault's checkpoint key (moat vault init prints it): checkpoints signed by any other key are refused",
    defaultText: "pinned at first contact, like ssh's known_hosts",
  },
  "audit-every": {
    type: "integer",
    placeholder: "N",
    min: 1,
    max: MAX_AUDITS_PER_MINUTE,
    description:
      "Each minute, ask the vault to prove N random shipped records unaltered in the checkpoint held",
  },
  timeout: TIMEOUT_OPTION,
  "print-systemd-unit": {
    type: "boolean",
    description:
      "Print a least-privilege systemd unit that runs moat ship with these inputs and options, and exit (docs/DEPLOY.md)",
  },
  ...CLIENT_SECURITY_OPTIONS,
} as const satisfies OptionTable;

/** `moat ship`'s options, usage and help. */
export const SHIP: CommandSpec<typeof SHIP_OPTIONS> = {
  name: "ship",
  summary: "Stream log files (or stdin) to a server's vault; lose nothing",
  usage: [
    "ship [options] FILE[=NAME]... [-[=NAME]]",
    "ship [options] --config FILE",
  ],
  description:
    `Follow each FILE like tail -F (survives rotation by rename and truncation,
waits for a file that does not exist yet), or read stdin with "-", and stream
every line to the server's vault. Each file is a source of its own, named
after the file without ".log" (/var/log/auth.log is "auth"); stdin is named
after this host. FILE=NAME names a source; inputs named alike share one.
Each line gets a sequence number; the server acknowledges only what it has
fsync'd, and the shipper keeps everything else in an on-disk spool per
source and resends it after a reconnect. A restarted shipper continues
exactly where it stopped. With only "-", moat exits once every line was
acknowledged. On a terminal, a status line shows the backlog.

Given several servers (--server a,b,c), the shipper uses the first and
moves to the next when one cannot be reached, closes or resets the
connection, fails the TLS handshake, or answers that it cannot take the
lines now (busy, internal error); each move is reported, and after every
door failed in a row it waits (0.2 s, doubling to 10 s) before the next
round. It resumes from what the new door's vault holds, with its spool
intact. Refusals of this shipper (access, token, certificate) and a vault
that fails the checks below stop it on any door. The doors must serve one
vault and sign with one checkpoint key; the state file is named after the
first door.

A vault that signs checkpoints sends one on connecting and at least once a
second while shipping: the shipper checks that each extends the one it
holds (signed by the vault's key, with a proof), keeps it in the state
file, and trims from the spool only what a checkpoint covers. A vault that
shows anything else (rolled back, cut, forked, another key, unsigned) stops
the shipper with exit 5 and the spool kept.`,
  positionals: true,
  options: SHIP_OPTIONS,
  env: [
    {
      name: "XDG_STATE_HOME",
      description: "Where the default --state-dir is (its moat folder)",
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
    {
      code: ExitCode.Integrity,
      description:
        "the vault rolled back, forked, changed key or failed an audit",
    },
  ],
  notes:
    "A lost connection is retried for ever, with the lines kept in the spool.",
};

/** One source as this run ships it. */
interface _Run extends ShipSource {
  statePath: string;
  backlog: ShipBacklog;
}

/**
 * Runs `moat ship`: with only "-", until stdin is acknowledged; with files,
 * until a signal; or prints a systemd unit.
 *
 * @param args The arguments after "ship".
 * @param context The environment.
 * @throws {MoatError} With the exit status of what went wrong.
 */
export async function shipCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(SHIP, markStdinArgs(args), context);
  if (parsed.help) return printLine(formatHelp(SHIP));
  const { values, given } = parsed;
  const positionals = parsed.positionals.map(unmarkStdinArg);
  const cwd = process.cwd();
  const argInputs = positionals.map((arg) => parseInputArg(arg, { cwd }));
  const inputs = [...argInputs];
  if (values.config !== undefined) {
    inputs.push(...parseShipConfig(readConfig(values.config), {
      file: values.config,
    }));
  }
  const sources = planSources(inputs, {
    source: values.source,
    hostname: () => os().hostname(),
  });
  const doors = parseDoors(
    values.server.length > 0 ? values.server : [DEFAULT_SERVER],
  );
  if (values.state !== undefined && values["state-dir"] !== undefined) {
    throw new UsageError("Use either --state or --state-dir, not both");
  }
  if (values.state !== undefined && sources.length > 1) {
    throw new UsageError(
      `--state names the state of one source, but ${sources.length} are shipped (${
        sources.map((s) => `"${escapeText(s.name)}"`).join(", ")
      }): use --state-dir DIR`,
    );
  }
  if (values["print-systemd-unit"]) {
    return await printShipUnit({
      doors,
      values,
      given,
      argInputs,
      sources,
      context,
    });
  }
  // The state's name keeps the form it had with one server: the first door.
  const serverText = `${doors[0]!.hostname}:${doors[0]!.port}`;
  const runs: _Run[] = sources.map((s) => ({
    ...s,
    statePath: statePathOf(s.name, {
      state: values.state,
      stateDir: values["state-dir"],
      server: serverText,
      env: context.env,
    }),
    backlog: new ShipBacklog(),
  }));
  let resume: ReadonlyMap<string, FilePosition> | undefined;
  if (values.state === undefined && values["state-dir"] === undefined) {
    const takeover = await takeOver(runs, { server: serverText, context });
    resume = takeover?.positions;
    // A source of the host's name sends what its own spool holds.
    if (
      takeover !== undefined && takeover.unacked > 0 &&
      !runs.some((r) => r.name === takeover.source)
    ) {
      runs.push({
        name: takeover.source,
        inputs: [],
        statePath: takeover.stateFile,
        backlog: new ShipBacklog(),
      });
    }
  }

  const client = clientOptions(
    { ...values, server: doorText(doors[0]!) },
    context.env,
  );
  const status = process.stderr.isTTY === true
    ? new _StatusLine(runs, () => process.stderr.columns ?? 80)
    : undefined;
  const note = (text: string) => status ? status.note(text) : printNote(text);
  const stop = new AbortController();
  process.on("SIGINT", () => stop.abort());
  process.on("SIGTERM", () => stop.abort());
  status?.start();
  const several = runs.length > 1;
  const results = await Promise.allSettled(runs.map(async (run) => {
    const prefix = several ? `"${escapeText(run.name)}": ` : "";
    try {
      return await ship({
        client,
        doors,
        inputs: run.inputs,
        ...(resume !== undefined && { resume }),
        stdin: process.stdin as AsyncIterable<Uint8Array>,
        statePath: run.statePath,
        source: run.name,
        spoolBytes: values["spool-size"],
        vaultKey: values["vault-key"],
        auditEvery: values["audit-every"],
        backlog: run.backlog,
        signal: stop.signal,
        onEvent: (e) => {
          const text = describeShipEvent(e, run.backlog);
          // "connected" names its source already.
          if (text !== undefined) {
            note(e.type === "connected" ? text : prefix + text);
          }
        },
      });
    } catch (err) {
      // One source failing stops them all: fail closed, say which.
      stop.abort();
      throw shipError(err, several ? run.name : undefined);
    }
  }));
  status?.stop();
  const failed = results.find((r) => r.status === "rejected");
  if (failed !== undefined) throw failed.reason;
  for (const [i, r] of results.entries()) {
    if (r.status !== "fulfilled") continue;
    const prefix = several ? `"${escapeText(runs[i]!.name)}": ` : "";
    const { backlog } = runs[i]!;
    printNote(
      `${prefix}${r.value} records acknowledged by the server${
        backlog.lines > 0
          ? `; ${describeBacklog(backlog)} kept in the spool`
          : ""
      }`,
    );
  }
}

/** Stands before `-=NAME` while options are parsed (no argument holds a NUL). */
const STDIN_MARK = "\0";

/**
 * Marks each `-=NAME` argument so the option parser takes it as an input
 * rather than as short options: not after `--`, and not as an option's value.
 */
function markStdinArgs(args: readonly string[]): string[] {
  const out: string[] = [];
  let options = true;
  for (const [i, arg] of args.entries()) {
    const prev = args[i - 1];
    const isValue = prev !== undefined && /^--[^=]+$/.test(prev) &&
      Object.hasOwn(SHIP_OPTIONS, prev.slice(2)) &&
      SHIP_OPTIONS[prev.slice(2) as keyof typeof SHIP_OPTIONS].type !==
        "boolean";
    if (arg === "--") options = false;
    out.push(
      options && !isValue && arg.startsWith("-=") ? STDIN_MARK + arg : arg,
    );
  }
  return out;
}

function unmarkStdinArg(arg: string): string {
  return arg.startsWith(STDIN_MARK) ? arg.slice(STDIN_MARK.length) : arg;
}

/** Reads a --config file, bounded. */
function readConfig(file: string): string {
  let bytes: Uint8Array;
  try {
    if (fs.statSync(file).size > MAX_CONFIG_BYTES) {
      throw new UsageError(
        `Cannot read --config "${
          escapeText(file)
        }": larger than ${MAX_CONFIG_BYTES} bytes`,
      );
    }
    bytes = fs.readFileSync(file);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(
      `Cannot read --config "${escapeText(file)}": ${describeFsError(err)}`,
    );
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new UsageError(
      `Cannot read --config "${escapeText(file)}": not UTF-8 text`,
    );
  }
}

/**
 * A source's state file: `--state` as given (one source), else
 * `ship-<source>-<hash>.json` in `--state-dir` or the default folder, the
 * same name an earlier moat gave the state of that source and server.
 *
 * @param source The source name.
 * @param options --state, --state-dir, the server and the environment.
 * @returns An absolute path.
 * @throws {UsageError} Without --state, --state-dir, $XDG_STATE_HOME or $HOME.
 */
export function statePathOf(
  source: string,
  options: {
    state?: string | undefined;
    stateDir?: string | undefined;
    server: string;
    env: Record<string, string | undefined>;
  },
): string {
  if (options.state !== undefined) return path.resolve(options.state);
  if (options.stateDir !== undefined) {
    // The default path's name, in the folder given.
    const name = path.basename(
      defaultStatePath({ source, server: options.server, env: { HOME: "/" } }),
    );
    return path.resolve(options.stateDir, name);
  }
  return defaultStatePath({ source, server: options.server, env: options.env });
}

/**
 * Finds the state an earlier moat kept for files that now go to sources of
 * their own (all files of one run went to a source named after the host):
 * their positions, and whether that state still holds unacknowledged lines.
 */
async function takeOver(
  runs: readonly _Run[],
  options: { server: string; context: RunContext },
) {
  let host: string;
  try {
    host = os().hostname();
  } catch {
    return undefined;
  }
  const moving = runs.filter((r) => r.name !== host);
  const paths = moving.flatMap((r) => r.inputs).filter((p) => p !== "-");
  if (paths.length === 0) return undefined;
  const stateFile = defaultStatePath({
    source: host,
    server: options.server,
    env: options.context.env,
  });
  const takeover = await readTakeover(stateFile, { source: host, paths });
  if (takeover === undefined) return undefined;
  // Said once: when the file's new source has no state yet.
  const fresh = new Set(
    moving.filter((r) => !fs.existsSync(r.statePath)).flatMap((r) => r.inputs),
  );
  const files = [...takeover.positions.keys()].filter((p) => fresh.has(p))
    .map((p) => `"${escapeText(p)}"`);
  const where = `the state "${escapeText(stateFile)}" of source "${
    escapeText(host)
  }"`;
  if (files.length > 0) {
    printNote(`continuing ${files.join(", ")} where ${where} stopped`);
  }
  if (takeover.unacked > 0 && !runs.some((r) => r.name === host)) {
    printNote(
      `${where} holds ${takeover.unacked} unacknowledged lines: they are sent as "${
        escapeText(host)
      }"`,
    );
  }
  return takeover;
}

/** Adds the source to a shipper error, and names a file that cannot be read. */
function shipError(err: unknown, source: string | undefined): unknown {
  const prefix = source === undefined ? "" : `"${escapeText(source)}": `;
  if (err instanceof MoatError) {
    // An earlier moat named a file's source after the host.
    const hint = err.code === "ERR_STATE_MISMATCH"
      ? " (to continue it, give the input that name: FILE=NAME or --source NAME)"
      : "";
    if (prefix === "" && hint === "") return err;
    return new MoatError(err.code, prefix + err.message + hint, err.exitCode, {
      cause: err,
    });
  }
  const fsError = err as { code?: unknown; path?: unknown } | null;
  if (typeof fsError?.code === "string" && typeof fsError.path === "string") {
    return new MoatError(
      "ERR_IO",
      `${prefix}Cannot read "${escapeText(fsError.path)}": ${
        describeFsError(err)
      }`,
      ExitCode.Failure,
      { cause: err },
    );
  }
  return err;
}

/** "12,345". */
function count(n: number): string {
  return n.toLocaleString("en-US");
}

/** "backlog 12,345 lines, 1.4 MiB". */
function describeBacklog(backlog: { lines: number; bytes: number }): string {
  return `backlog ${count(backlog.lines)} ${
    backlog.lines === 1 ? "line" : "lines"
  }, ${formatBytes(backlog.bytes)}`;
}

/** "0.4", "4", "10": seconds without a needless ".0". */
function seconds(ms: number): string {
  return String(Math.round(ms / 100) / 10);
}

/**
 * What `moat ship` prints for a shipper event, or undefined for nothing.
 * Text from the server or the file system is escaped.
 *
 * @param e The event.
 * @param backlog The source's backlog, for retry and spool notices.
 * @returns One line without the "moat: " prefix.
 */
export function describeShipEvent(
  e: ShipperEvent,
  backlog: { lines: number; bytes: number },
): string | undefined {
  switch (e.type) {
    case "connected":
      return `shipping "${escapeText(e.source)}" to ${
        escapeText(e.server)
      } as ${escapeText(e.peer)}; server holds ${e.lastSeq} records`;
    case "disconnected": {
      if (e.next === undefined || e.server === undefined) {
        return `${e.connected ? "connection lost" : "server unreachable"} (${
          escapeText(e.message)
        }); retrying in ${seconds(e.retryMs)} s; ${describeBacklog(backlog)}`;
      }
      const door = escapeText(e.server);
      return `${
        e.connected ? `connection to ${door} lost` : `${door} unreachable`
      } (${escapeText(e.message)}); trying ${escapeText(e.next)} ${
        e.retryMs > 0 ? `in ${seconds(e.retryMs)} s` : "now"
      }; ${describeBacklog(backlog)}`;
    }
    case "full":
      return `SPOOL FULL: ${count(e.usedBytes)} of ${
        count(e.maxBytes)
      } bytes in use and the next ${count(e.waitingLines)} lines need ${
        count(e.waitingBytes)
      } more; reading is paused until the server acknowledges; no line is dropped; ${
        describeBacklog(backlog)
      }`;
    case "resumed":
      return `spool has room again; reading resumed; ${
        describeBacklog(backlog)
      }`;
    case "spool":
      if (e.event.type === "checkpoint_failed") {
        const error = e.event.error;
        return `cannot save the shipper state: ${
          escapeText(error instanceof Error ? error.message : String(error))
        }`;
      }
      return `spool repaired after a crash: ${
        escapeText(JSON.stringify(e.event))
      }`;
    case "follow":
      if (e.event.type === "skipped") {
        return `WARNING: ${
          escapeText(e.event.path)
        } rotated twice before it was read; not shipped: ${
          e.event.files.map((f) => escapeText(f)).join(", ")
        }`;
      }
      if (e.event.type === "lost") {
        return `WARNING: ${
          escapeText(e.event.path)
        } was replaced while moat was stopped and its old file is gone; its unread rest is lost`;
      }
      if (
        e.event.type === "rotated" || e.event.type === "truncated" ||
        e.event.type === "waiting"
      ) {
        return `${escapeText(e.event.path)} ${e.event.type}`;
      }
      return undefined;
    case "pinned":
      return `pinned the vault's checkpoint key ${
        escapeText(e.key)
      } (first contact; check it against moat vault init's, or give --vault-key)`;
    case "receipt":
    case "audited":
    case "done":
      return undefined;
  }
}

/** One source's backlog, for {@linkcode formatShipStatus}. */
export interface SourceStatus {
  name: string;
  lines: number;
  bytes: number;
}

/**
 * The status line: the backlog of every source and the rate of
 * acknowledged lines, shortened to fit `columns` (per-source detail goes
 * first, then words; the result is never longer than `columns - 1`, so the
 * cursor stays on the line).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatShipStatus } from "./ship.ts";
 *
 * const sources = [
 *   { name: "auth", lines: 12345, bytes: 1468006 },
 *   { name: "system", lines: 0, bytes: 0 },
 * ];
 * assert.equal(
 *   formatShipStatus(sources, 523, 120),
 *   "moat: backlog 12,345 lines, 1.4 MiB (auth 12,345 lines, 1.4 MiB; system 0 lines, 0 B); 523 lines/s acknowledged",
 * );
 * assert.equal(
 *   formatShipStatus(sources, 523, 70),
 *   "moat: backlog 12,345 lines, 1.4 MiB; 523 lines/s acknowledged",
 * );
 * ```
 *
 * @param sources Each source's backlog.
 * @param rate Acknowledged lines per second.
 * @param columns The terminal's width.
 * @returns The line, without a newline.
 */
export function formatShipStatus(
  sources: readonly SourceStatus[],
  rate: number,
  columns: number,
): string {
  const total = { lines: 0, bytes: 0 };
  for (const s of sources) {
    total.lines += s.lines;
    total.bytes += s.bytes;
  }
  const detail = sources.length > 1
    ? ` (${
      sources.map((s) =>
        `${escapeText(s.name)} ${describeBacklog(s).slice("backlog ".length)}`
      ).join("; ")
    })`
    : "";
  const head = `moat: ${describeBacklog(total)}`;
  const speed = `${count(Math.round(rate))} lines/s`;
  const width = Math.max(1, columns - 1);
  for (
    const text of [
      `${head}${detail}; ${speed} acknowledged`,
      `${head}; ${speed} acknowledged`,
      `${head}; ${speed}`,
    ]
  ) {
    if ([...text].length <= width) return text;
  }
  return [...`${head}; ${speed}`].slice(0, width).join("");
}

/** Acknowledged lines per second over the last few seconds. */
class _RateMeter {
  #samples: { t: number; n: number }[] = [];

  /** Adds a sample of the running total and returns the rate. */
  sample(t: number, n: number): number {
    const samples = this.#samples;
    samples.push({ t, n });
    while (samples.length > 2 && t - samples[1]!.t >= RATE_WINDOW_MS) {
      samples.shift();
    }
    const first = samples[0]!;
    const secs = (t - first.t) / 1000;
    return secs > 0 ? (n - first.n) / secs : 0;
  }
}

/**
 * The status line on a terminal: redrawn in place a few times a second,
 * cleared around every note so notes scroll above it.
 */
class _StatusLine {
  #runs: readonly { name: string; backlog: ShipBacklog }[];
  #columns: () => number;
  #rate = new _RateMeter();
  #timer: ReturnType<typeof setInterval> | undefined;
  #shown = false;

  constructor(
    runs: readonly { name: string; backlog: ShipBacklog }[],
    columns: () => number,
  ) {
    this.#runs = runs;
    this.#columns = columns;
  }

  start(): void {
    this.#timer = setInterval(() => this.#draw(), 1000 / STATUS_PER_SECOND);
    this.#draw();
  }

  note(text: string): void {
    this.#clear();
    printNote(text);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#clear();
  }

  #draw(): void {
    let acked = 0;
    for (const r of this.#runs) acked += r.backlog.ackedLines;
    const rate = this.#rate.sample(performance.now(), acked);
    const line = formatShipStatus(
      this.#runs.map((r) => ({
        name: r.name,
        lines: r.backlog.lines,
        bytes: r.backlog.bytes,
      })),
      rate,
      this.#columns(),
    );
    process.stderr.write(`\r${line}\x1b[K`);
    this.#shown = true;
  }

  #clear(): void {
    if (this.#shown) process.stderr.write("\r\x1b[K");
    this.#shown = false;
  }
}

/** Prints the systemd unit for these inputs and options. */
async function printShipUnit(options: {
  doors: readonly ServerAddr[];
  values: {
    state?: string | undefined;
    "state-dir"?: string | undefined;
  };
  given: readonly GivenOption[];
  argInputs: readonly InputSpec[];
  sources: readonly ShipSource[];
  context: RunContext;
}): Promise<void> {
  const { values, context, doors } = options;
  const followed = options.sources.flatMap((s) => s.inputs).filter((p) =>
    p !== "-"
  );
  const stdin = options.sources.some((s) => s.inputs.includes("-"));
  if (stdin) {
    throw new UsageError(
      'Cannot write a systemd unit that reads standard input ("-"): a service has none',
    );
  }
  const addresses: string[] = [];
  for (const door of doors) {
    const host = door.hostname.replace(/^\[|\]$/g, "");
    try {
      addresses.push(
        ...(await dns().lookup(host, { all: true, verbatim: true })).map(
          (a) => a.address,
        ),
      );
    } catch (err) {
      throw new UsageError(
        `Cannot write a systemd unit: cannot resolve "${escapeText(host)}" (${
          escapeText((err as Error).message)
        })`,
      );
    }
  }
  const runtime = runtimeInfo().runtime === "deno" ? "deno" : "bun";
  const access = readAccess(followed);
  const state = values.state !== undefined
    ? { file: path.resolve(values.state) }
    : values["state-dir"] !== undefined
    ? { dir: path.resolve(values["state-dir"]) }
    : undefined;
  await writeStdoutText(renderShipUnit({
    launcher: context.target === "script"
      ? { executable: process.execPath, script: context.script, runtime }
      : { executable: process.execPath },
    flags: options.given,
    inputs: options.argInputs,
    followed,
    cwd: process.cwd(),
    server: doors,
    serverAddresses: addresses,
    nameServers: nameServers(),
    ...(state !== undefined && { state }),
    readGroups: access.groups,
    unreadable: access.unreadable,
    version: VERSION,
  }));
}

/** The name servers of /etc/resolv.conf (none if it cannot be read). */
function nameServers(): string[] {
  let text: string;
  try {
    text = fs.readFileSync("/etc/resolv.conf", "utf8");
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m) out.push(m[1]!.replace(/%.*$/, ""));
  }
  return out;
}

/**
 * Which groups a service user needs to read the followed files (those not
 * readable by everyone but by their group), and which files only their
 * owner can read. Files not there yet are judged by nothing.
 */
function readAccess(
  files: readonly string[],
): { groups: string[]; unreadable: string[] } {
  const gids = new Set<number>();
  const unreadable: string[] = [];
  for (const file of files) {
    let st: fs.Stats;
    try {
      st = fs.statSync(file);
    } catch {
      continue;
    }
    if (st.mode & 0o004) continue;
    if ((st.mode & 0o040) && st.gid !== 0) gids.add(st.gid);
    else unreadable.push(file);
  }
  const names = new Map<number, string>();
  try {
    for (const line of fs.readFileSync("/etc/group", "utf8").split("\n")) {
      const [name, , gid] = line.split(":");
      if (name && gid && /^\d+$/.test(gid)) names.set(Number(gid), name);
    }
  } catch {
    // Numbers then.
  }
  return {
    groups: [...gids].map((g) => names.get(g) ?? String(g)),
    unreadable,
  };
}
