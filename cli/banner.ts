/**
 * The few lines `moat serve` prints on a terminal as it starts: where it
 * listens, who may connect, what it serves, the vault (loudly when it is
 * not sealed) and where the audit log goes.
 *
 * @module
 */

import { escapeText, truncateText } from "../lib/text.ts";

/** What the banner shows. */
export interface BannerInfo {
  /** moat's version. */
  version: string;
  /** The folder files are served from. */
  root: string;
  /** Listening addresses, "host:port". */
  addrs: readonly string[];
  /** The syslog port's addresses, when there is one. */
  syslog?: readonly string[] | undefined;
  /** The allowlist's one-line description. */
  allow: string;
  /** TLS on the main port. */
  tls: boolean;
  /** Client authentication required: "certificate", "token". */
  clientAuth: readonly string[];
  /** Plain-text clients (nc, telnet) served. */
  plain: boolean;
  /** The vault, when there is one. */
  vault?: { dir: string; sealed: boolean } | undefined;
  /** The audit log's file (absolute), or undefined for stderr. */
  auditFile: string | undefined;
  /** True when the file was chosen because the chat has the terminal. */
  auditByDefault: boolean;
}

/** Options for {@linkcode formatBanner}. */
export interface BannerOptions {
  /** Terminal width; values wrap to it. @default {80} */
  columns?: number;
  /** Mark the unsealed-vault warning in bold red. @default {false} */
  color?: boolean;
}

/** Width of the label column, indent included. */
const LABEL = 14;

/**
 * Formats the start-up banner. Paths and addresses are escaped.
 *
 * @example
 * ```ts
 * import { formatBanner } from "./banner.ts";
 * import assert from "node:assert/strict";
 * const lines = formatBanner({
 *   version: "0.1.0", root: "/srv", addrs: ["127.0.0.1:4320"],
 *   allow: "allowing 1 rule (10.0.0.5/32), denying 0", tls: false,
 *   clientAuth: [], plain: true, vault: { dir: "/v", sealed: false },
 *   auditFile: undefined, auditByDefault: false,
 * });
 * assert.match(lines.join("\n"), /vault {7}\/v {2}UNSEALED/);
 * assert.ok(lines.every((l) => l.length <= 80));
 * ```
 *
 * @param info What to show.
 * @param options Width and colour.
 * @returns The lines, without newlines.
 */
export function formatBanner(
  info: BannerInfo,
  options: BannerOptions = {},
): string[] {
  const columns = Math.max(40, options.columns ?? 80);
  const loud = (line: string) =>
    options.color ? `\x1b[1;31m${line}\x1b[0m` : line;
  const lines = [
    truncate(
      `moat ${info.version} is serving ${escapeText(info.root)}`,
      columns,
    ),
    ...row("listening", info.addrs.join(", "), columns),
  ];
  if (info.syslog !== undefined) {
    lines.push(...row("syslog", info.syslog.join(", "), columns));
  }
  lines.push(...row("allow", info.allow, columns));
  lines.push(...row("security", security(info), columns));
  if (info.vault === undefined) {
    lines.push(...row("vault", "none", columns));
  } else if (info.vault.sealed) {
    lines.push(
      ...row("vault", `${escapeText(info.vault.dir)} (sealed)`, columns),
    );
  } else {
    lines.push(
      ...row("vault", `${escapeText(info.vault.dir)}  UNSEALED`, columns)
        .map(loud),
      ...wrap(
        "The vault is NOT sealed: whoever controls this host can rewrite its " +
          "records undetected. Stop moat and run moat vault init on it.",
        columns - 3,
      ).map((l) => loud(`!! ${l}`)),
    );
  }
  lines.push(
    ...row(
      "audit log",
      info.auditFile === undefined
        ? "stderr"
        : `${escapeText(info.auditFile)}${
          info.auditByDefault
            ? " (the chat has this terminal; --log FILE or --log - to change)"
            : ""
        }`,
      columns,
    ),
  );
  lines.push(
    ...wrap(
      "Type a line to send it to every chat client. Ctrl-C stops; kill -HUP reloads the configuration and reopens the log.",
      columns,
    ),
  );
  return lines;
}

function security(info: BannerInfo): string {
  const parts = [info.tls ? "TLS 1.3" : "plain TCP (no TLS)"];
  for (const kind of info.clientAuth) parts.push(`${kind} required`);
  if (info.plain) parts.push("plain-text clients (nc, telnet) served");
  return parts.join(", ");
}

/** A labelled value, wrapped under its label. */
function row(label: string, value: string, columns: number): string[] {
  return wrap(value, columns - LABEL).map((l, i) =>
    (i === 0 ? `  ${label}`.padEnd(LABEL) : " ".repeat(LABEL)) + l
  );
}

/** Splits text at spaces into lines of at most `width` (a longer word is cut). */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    const next = line === "" ? word : `${line} ${word}`;
    if (next.length <= width) {
      line = next;
      continue;
    }
    if (line !== "") lines.push(line);
    line = truncate(word, width);
  }
  lines.push(line);
  return lines;
}

function truncate(text: string, width: number): string {
  return text.length <= width ? text : truncateText(text, width - 1);
}
