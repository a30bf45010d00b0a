/**
 * `moat vault init|verify|ls|cat`: keep a vault and read it back.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { ExitCode, MoatError, UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { catRecords, listSources } from "../lib/vault/read.ts";
import { initVault } from "../lib/vault/init.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  describeFsError,
  formatHelp,
  listWords,
  type OptionTable,
  type OptionValues,
  parseCommand,
  type RunContext,
  unknownWord,
} from "./options.ts";
import { printLine, printToStderr, writeStdout } from "./output.ts";

const VERIFY_OPTIONS = {
  key: {
    type: "string",
    placeholder: "KEY",
    description: "The verification key printed by init",
    group: "Options of verify",
  },
  "key-file": {
    type: "file",
    placeholder: "FILE",
    description: "Read the verification key from FILE",
    group: "Options of verify",
  },
} as const satisfies OptionTable;

const CAT_OPTIONS = {
  source: {
    type: "string",
    placeholder: "NAME",
    description: "Only this source: its name, or PEER/NAME",
    group: "Options of cat",
  },
  since: {
    type: "string",
    placeholder: "TIME",
    description:
      "Only records received at or after TIME: an ISO 8601 date or time, or a duration ago such as 90s, 15m, 2h, 7d",
    group: "Options of cat",
  },
} as const satisfies OptionTable;

const SUBCOMMANDS = ["init", "verify", "ls", "cat"] as const;

/** `moat vault`'s options (by subcommand), usage and help. */
export const VAULT: CommandSpec = {
  name: "vault",
  summary: "Keep a vault: moat vault init|verify|ls|cat DIR",
  usage: [
    "vault init DIR",
    "vault verify DIR [--key KEY | --key-file FILE]",
    "vault ls DIR",
    "vault cat DIR [--source NAME] [--since TIME]",
  ],
  description:
    `init    makes DIR a sealed vault (or seals an unsealed one) and prints its
        verification key once: keep it off the vault host. moat serve --vault
        then seals every --seal-interval with a key that evolves one way.
verify  checks every record's checksum and hash chain, and with the key every
        seal; exits 0 only if nothing is damaged, else names the first bad
        point. Records after the last seal are reported as an unsealed tail.
ls      lists the sources in a vault: records, first and last time.
cat     prints stored lines in order (per source by sequence number; sources
        merged by receive time). On a terminal, control characters are escaped.`,
  positionals: true,
  options: { ...VERIFY_OPTIONS, ...CAT_OPTIONS },
  exits: [
    ...COMMON_EXITS,
    {
      code: ExitCode.Integrity,
      description: "verify found damage (it names the first bad point)",
    },
  ],
};

/**
 * Runs `moat vault <subcommand> DIR`.
 *
 * @param args The arguments after "vault".
 * @param context The environment.
 * @throws {MoatError} ERR_INTEGRITY (exit 5) when verify finds damage.
 */
export async function vaultCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const [sub, ...rest] = args;
  if (
    sub === undefined || sub === "-h" || sub === "--help" || sub === "help"
  ) {
    return printLine(formatHelp(VAULT));
  }
  switch (sub) {
    case "init": {
      const parsed = parseVault(sub, {}, rest, context);
      if (parsed) await initCommand(parsed.dir);
      return;
    }
    case "verify": {
      const parsed = parseVault(sub, VERIFY_OPTIONS, rest, context);
      if (parsed) await verifyCommand(parsed.dir, parsed.values);
      return;
    }
    case "ls": {
      const parsed = parseVault(sub, {}, rest, context);
      if (parsed) await lsCommand(parsed.dir);
      return;
    }
    case "cat": {
      const parsed = parseVault(sub, CAT_OPTIONS, rest, context);
      if (parsed) await catCommand(parsed.dir, parsed.values);
      return;
    }
    default:
      throw unknownWord("vault command", sub, {
        candidates: SUBCOMMANDS,
        see: listWords(SUBCOMMANDS, "or"),
      });
  }
}

/**
 * Parses a subcommand's arguments: its options and one DIR, which must be a
 * vault except for init. Undefined when the help was asked for (and printed).
 */
function parseVault<O extends OptionTable>(
  sub: (typeof SUBCOMMANDS)[number],
  options: O,
  args: string[],
  context: RunContext,
): { dir: string; values: OptionValues<O> } | undefined {
  const spec: CommandSpec<O> = { ...VAULT, name: `vault ${sub}`, options };
  const parsed = parseCommand(spec, args, context);
  if (parsed.help) {
    printLine(formatHelp(VAULT));
    return undefined;
  }
  if (parsed.positionals.length !== 1) {
    throw new UsageError(
      `vault ${sub} takes one DIR (see moat vault --help)`,
    );
  }
  const dir = parsed.positionals[0]!;
  if (sub !== "init") checkVaultDir(dir);
  return { dir, values: parsed.values };
}

async function initCommand(dir: string): Promise<void> {
  const made = await initVault(dir);
  printLine(made.verificationKey);
  printToStderr(
    `Vault "${escapeText(made.dir)}" (id ${made.id}) is ${
      made.existed ? "now " : ""
    }sealed. Its verification key ` +
      `is printed above, once, and stored nowhere: keep it off this host (a password manager, paper). ` +
      `Check the vault with: moat vault verify DIR --key KEY` +
      (made.existed
        ? ". Records stored before now were not protected until the first seal covers them."
        : ""),
  );
}

/** A readable error for a DIR that is no vault. */
function checkVaultDir(dir: string): void {
  if (fs.existsSync(path.join(dir, "VAULT"))) return;
  try {
    fs.statSync(dir);
  } catch (err) {
    throw new UsageError(
      `Cannot read vault "${escapeText(dir)}": ${describeFsError(err)}`,
    );
  }
  throw new UsageError(`"${escapeText(dir)}" is not a moat vault`);
}

async function lsCommand(dir: string): Promise<void> {
  const rows = await listSources(dir);
  printLine(["PEER", "SOURCE", "RECORDS", "FIRST", "LAST"].join("\t"));
  const iso = (t: number | undefined) => (t ? new Date(t).toISOString() : "-");
  for (const r of rows) {
    printLine(
      [
        escapeText(
          r.identity === undefined ? r.peer : `${r.peer}[${r.identity}]`,
        ),
        escapeText(r.name),
        r.records,
        iso(r.firstRecvTs),
        iso(r.lastRecvTs),
      ].join("\t"),
    );
  }
}

async function catCommand(
  dir: string,
  values: OptionValues<typeof CAT_OPTIONS>,
): Promise<void> {
  // A log line is attacker-controlled: escaped on a terminal; into a pipe as
  // stored but with line feeds inside a record written as \n, and labelled
  // with its source whenever more than one matches (lib/vault/read.ts).
  for await (
    const chunk of catRecords(dir, {
      ...(values.source !== undefined && { source: values.source }),
      ...(values.since !== undefined && { since: parseSince(values.since) }),
      terminal: process.stdout.isTTY === true,
    })
  ) {
    await writeStdout(chunk);
  }
}

/**
 * Parses --since: ISO 8601, or a duration ago (90s, 15m, 2h, 7d).
 *
 * @param text The value.
 * @returns Milliseconds since the epoch.
 * @throws {UsageError} If it is neither.
 */
export function parseSince(text: string): number {
  const m = /^(\d+)(s|m|h|d)$/.exec(text);
  if (m) {
    const unit =
      { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2] as "s" | "m" | "h" | "d"];
    return Date.now() - Number(m[1]) * unit;
  }
  const t = Date.parse(text);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(t)) {
    throw new UsageError(
      `Invalid --since "${
        escapeText(text)
      }": expected an ISO 8601 time or a duration like 15m`,
    );
  }
  return t;
}

/** `moat vault verify`: prints the report; exits 5 (integrity) on damage. */
async function verifyCommand(
  dir: string,
  values: OptionValues<typeof VERIFY_OPTIONS>,
): Promise<void> {
  if (values.key !== undefined && values["key-file"] !== undefined) {
    throw new UsageError("Give --key or --key-file, not both");
  }
  let key = values.key;
  if (values["key-file"] !== undefined) {
    try {
      key = fs.readFileSync(values["key-file"], "utf8");
    } catch (err) {
      throw new UsageError(
        `Cannot read --key-file "${escapeText(values["key-file"])}": ${
          describeFsError(err)
        }`,
      );
    }
  }
  let report;
  try {
    report = await verifyVault(dir, key === undefined ? {} : { key });
  } catch (err) {
    if (err instanceof TypeError) throw new UsageError(err.message);
    throw err;
  }
  const iso = (t: number) => new Date(t).toISOString();
  printLine(
    `vault ${report.id}: ${report.seals} seal(s)${
      report.lastSealTime !== undefined
        ? `, last at ${iso(report.lastSealTime)}`
        : ""
    }${report.keyed ? ", verified with the key" : ""}`,
  );
  for (const s of report.sources) {
    const tail = s.unsealed > 0
      ? `, unsealed tail (${s.unsealed} records)`
      : "";
    printLine(
      `  ${
        escapeText(s.label)
      }: ${s.records} records, ${s.sealedSeq} sealed${tail}`,
    );
    if (s.torn) {
      printLine(
        `  ${
          escapeText(s.label)
        }: ${s.torn.bytes} bytes after the last record are not a whole record ` +
          `(a write in progress or a torn write, cut when the vault is next opened; not verified)`,
      );
    }
  }
  if (!report.keyed) {
    printLine(
      "WARNING: no --key: checksums and hash chains checked, seals NOT verified",
    );
  }
  if (report.unsealed > 0) {
    printLine(
      `unsealed tail (${report.unsealed} records): chained but not yet covered by a seal, so not verified`,
    );
  }
  for (const p of report.problems) {
    printLine(`DAMAGED: ${escapeText(p.message)}`);
  }
  if (!report.ok) {
    throw new MoatError(
      "ERR_INTEGRITY",
      `Vault "${escapeText(dir)}" failed verification`,
      ExitCode.Integrity,
    );
  }
  printLine(
    report.keyed
      ? "OK: every record and seal is intact"
      : "OK: every record and chain is intact",
  );
}
