/**
 * `moat status`: ask a running `moat serve`, through its local socket, what
 * it is doing: connections, vault sources and their liveness, the seal
 * epoch, recent refusals.
 *
 * @module
 */

import { getNet } from "../lib/net/mod.ts";
import { ExitCode, UsageError } from "../lib/errors.ts";
import { DEFAULT_PORT } from "../lib/limits.ts";
import {
  DEFAULT_STATUS_TIMEOUT_MS,
  defaultSocketPath,
  requestStatus,
} from "../lib/status_socket.ts";
import { decodeStatusReport, type StatusReport } from "../lib/server/status.ts";
import { escapeText } from "../lib/text.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  formatHelp,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine } from "./output.ts";
import { formatBytes } from "./progress.ts";

const STATUS_OPTIONS = {
  socket: {
    type: "string",
    placeholder: "PATH",
    description: "The server's status socket (as given to moat serve --socket)",
    defaultText: "found from --vault or --port, as moat serve makes it",
  },
  vault: {
    type: "string",
    placeholder: "DIR",
    description: "The server's --vault: its socket is DIR/moat.sock",
  },
  port: {
    type: "integer",
    placeholder: "N",
    min: 0,
    max: 65535,
    default: DEFAULT_PORT,
    description: "The server's --port, for a server without a vault",
  },
  json: {
    type: "boolean",
    description: "Print the whole status as one JSON object",
  },
  timeout: {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_STATUS_TIMEOUT_MS / 1000,
    description: "Give up when the server has not answered within SECS",
  },
} as const satisfies OptionTable;

/** `moat status`'s options, usage and help. */
export const STATUS: CommandSpec<typeof STATUS_OPTIONS> = {
  name: "status",
  summary:
    "Show what a running server is doing: connections, sources, seals, refusals",
  usage: ["status [--socket PATH | --vault DIR | --port N] [--json]"],
  description:
    `Ask a moat serve on this host, through its local socket (mode 0600: only the
server's user and root can ask), for its connections (name, peer, identity,
mode, bytes in and out, since when), its vault sources (records, when last
heard from, seconds since the last record, silent or not), the seal epoch and
the refusals of the last minute and hour.

The socket is where moat serve makes it: DIR/moat.sock beside a --vault;
otherwise $XDG_RUNTIME_DIR/moat/moat-PORT.sock, or /run/moat/moat-PORT.sock
for root, or TMPDIR/moat-UID/moat-PORT.sock; or its --socket PATH.`,
  options: STATUS_OPTIONS,
  env: [{
    name: "XDG_RUNTIME_DIR",
    description:
      "Where the socket of a server without a vault is looked for (its moat folder)",
  }],
  exits: [
    ...COMMON_EXITS,
    {
      code: ExitCode.Connection,
      description:
        "no server answers on the socket, or it is not this user's, or it timed out",
    },
  ],
};

/**
 * Runs `moat status`: prints the report, as text or one JSON object.
 *
 * @param args The arguments after "status".
 * @param context The environment.
 * @throws {MoatError} ERR_USAGE for --socket with --vault; ERR_CONNECT,
 * ERR_TIMEOUT or ERR_PROTOCOL when the server cannot be asked.
 */
export async function statusCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(STATUS, args, context);
  if (parsed.help) return printLine(formatHelp(STATUS));
  const { values, given } = parsed;
  const gave = new Set(given.map((g) => g.name));
  if (gave.has("socket") && (gave.has("vault") || gave.has("port"))) {
    throw new UsageError(
      "--socket names the socket itself; give it without --vault or --port",
    );
  }
  if (gave.has("vault") && gave.has("port")) {
    throw new UsageError(
      "A server with a vault has its socket in it: give --vault or --port, not both",
    );
  }
  const socket = values.socket ?? defaultSocketPath({
    vault: values.vault,
    port: values.port,
    env: context.env,
  });
  const report = decodeStatusReport(
    await requestStatus(getNet(), socket, {
      timeoutMs: values.timeout * 1000,
    }),
  );
  // JSON.stringify escapes every control character: safe on a terminal.
  if (values.json) return printLine(JSON.stringify(report));
  for (const line of formatStatus(report)) printLine(line);
}

/**
 * The report as text: a summary, then a table of connections and one of
 * sources. Every piece of text from the server is escaped; ages are
 * measured against the server's own clock (`now`).
 *
 * @example
 * ```ts ignore
 * for (const line of formatStatus(report)) printLine(line);
 * ```
 *
 * @param report A checked report.
 * @returns The lines, without newlines.
 */
export function formatStatus(report: StatusReport): string[] {
  const t = (text: string) => escapeText(text, { maxLength: 256 });
  const now = Date.parse(report.now);
  const ago = (iso: string | null) => {
    if (iso === null) return "-";
    const at = Date.parse(iso);
    return Number.isFinite(at) && Number.isFinite(now)
      ? `${formatAge(now - at)} ago`
      : t(iso);
  };
  const up = now - Date.parse(report.startedAt);
  const lines = [
    `${t(report.server)} (${t(report.runtime)}), pid ${report.pid}, up ${
      Number.isFinite(up) ? formatAge(up) : "?"
    }, listening on ${report.listening.map(t).join(", ") || "nothing"}`,
  ];
  if (report.vault === null) lines.push("no vault");
  else {
    const seal = report.seal;
    let sealText = "unsealed (moat vault init sets up seals)";
    if (seal?.sealed) {
      sealText = seal.epoch === null
        ? "sealed, no seal written yet"
        : `sealed, epoch ${seal.epoch}, last seal ${ago(seal.at)}`;
      if (seal.failed !== null) {
        sealText += `; LAST SEAL FAILED: ${t(seal.failed)}`;
      }
    }
    lines.push(`vault ${t(report.vault)}: ${sealText}`);
  }
  lines.push(
    `refusals: ${report.refusals.lastMinute} in the last minute, ${report.refusals.lastHour} in the last hour`,
  );
  lines.push("");
  const conns = report.connections;
  lines.push(
    conns.length === 0
      ? "no connections"
      : `${conns.length} connection${conns.length === 1 ? "" : "s"}`,
  );
  if (conns.length > 0) {
    lines.push(...table(
      ["NAME", "PEER", "IDENTITY", "MODE", "SOURCE", "IN", "OUT", "SINCE"],
      conns.map((c) => [
        t(c.name),
        t(c.peer),
        c.identity === null ? "-" : t(c.identity),
        t(c.mode),
        c.source === null ? "-" : t(c.source),
        formatBytes(c.bytesIn),
        formatBytes(c.bytesOut),
        ago(c.since),
      ]),
    ));
  }
  if (report.vault !== null) {
    lines.push("");
    const sources = report.sources;
    lines.push(
      sources.length === 0
        ? "no sources"
        : `${sources.length} source${
          sources.length === 1 ? "" : "s"
        } (silent after ${
          formatAge(report.silentAfterMs)
        } without a record or heartbeat)`,
    );
    if (sources.length > 0) {
      lines.push(...table(
        [
          "PEER",
          "IDENTITY",
          "SOURCE",
          "RECORDS",
          "CONNS",
          "LAST SEEN",
          "LAG",
          "STATE",
        ],
        sources.map((s) => [
          t(s.peer),
          s.identity === null ? "-" : t(s.identity),
          t(s.name),
          s.records.toLocaleString("en-US"),
          String(s.connections),
          ago(s.lastSeen),
          s.lagSeconds === null ? "-" : formatAge(s.lagSeconds * 1000),
          s.silent
            ? "SILENT"
            : s.connections > 0
            ? "shipping"
            : s.lastSeen === null
            ? "-"
            : "disconnected",
        ]),
      ));
    }
  }
  return lines;
}

/**
 * A duration for people: "0 s", "42 s", "5m 3s", "2h 5m", "3d 4h".
 *
 * @example
 * ```ts
 * import { formatAge } from "./status.ts";
 * import assert from "node:assert/strict";
 * assert.equal(formatAge(42_000), "42 s");
 * assert.equal(formatAge(7_500_000), "2h 5m");
 * ```
 *
 * @param ms Milliseconds; below 0 counts as 0.
 * @returns The duration in its two largest units.
 */
export function formatAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m`;
  return `${Math.floor(s / 86_400)}d ${Math.floor(s / 3600) % 24}h`;
}

/** Left-aligned columns two spaces apart. */
function table(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => r[i]!.length))
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return [line(head), ...rows.map(line)];
}
