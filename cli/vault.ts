/**
 * `moat vault init|verify|ls|cat|prune|checkpoint|proof`: keep a vault, read
 * it back, and prove what it holds.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { ExitCode, MoatError, UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { nativeSha256Batch, nativeSha256Parts } from "../lib/net/sha256.ts";
import { setNativeSha256, setNativeSha256Batch } from "../lib/sha256.ts";
import { catRecords, listSources, matchSources } from "../lib/vault/read.ts";
import { initVault } from "../lib/vault/init.ts";
import { openVault, sourceLabel } from "../lib/vault/store.ts";
import { verifyVault } from "../lib/vault/verify.ts";
import {
  COSIGNATURE_V1,
  parseVerifier,
  type Verifier,
} from "../lib/checkpoint.ts";
import {
  latestCheckpoint,
  proveConsistency,
  proveInclusion,
} from "../lib/vault/proof.ts";
import type { VerifyProgress, VerifyReport } from "../lib/vault/verify.ts";
import { isNatsUrl } from "../lib/vault/nats/url.ts";
import { NATS_READ_OPTIONS } from "./vault_nats_options.ts";
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
import { formatBytes } from "./progress.ts";
import {
  printLine,
  printToStderr,
  writeStdout,
  writeStdoutText,
} from "./output.ts";

const KEY_OPTIONS = {
  key: {
    type: "string",
    placeholder: "KEY",
    description: "The verification key printed by init",
    group: "Options of verify and prune",
  },
  "key-file": {
    type: "file",
    placeholder: "FILE",
    description: "Read the verification key from FILE",
    group: "Options of verify and prune",
  },
} as const satisfies OptionTable;

const VERIFY_OPTIONS = {
  ...KEY_OPTIONS,
  key: {
    ...KEY_OPTIONS.key,
    multiple: true,
    description:
      "The verification key printed by init; of a nats:// vault, each front door's (repeatable)",
  },
  checkpoint: {
    type: "file",
    placeholder: "FILE",
    multiple: true,
    description:
      "A signed checkpoint held outside the vault (from a shipper's state, a witness, moat vault checkpoint): the vault must extend it, or verify fails naming FILE; repeatable",
    group: "Options of verify",
  },
  "witness-key": {
    type: "string",
    placeholder: "KEY",
    multiple: true,
    description:
      "Require this witness's cosignatures (its public key, as moat witness --init prints it): each source's latest checkpoint must be cosigned once older than --witness-grace, and what it cosigned must hold for the records; repeatable",
    group: "Options of verify",
  },
  "witness-grace": {
    type: "string",
    placeholder: "DURATION",
    description:
      "How long a checkpoint may wait for its cosignatures (default 10m, or more with a long seal interval)",
    group: "Options of verify",
  },
  "min-retain": {
    type: "string",
    placeholder: "DURATION",
    description:
      "Count as damage a prune that cut records younger than DURATION (such as 30d) at its time: give the --retain the server runs with",
    group: "Options of verify",
  },
} as const satisfies OptionTable;

const PRUNE_OPTIONS = {
  ...KEY_OPTIONS,
  before: {
    type: "string",
    placeholder: "TIME",
    description:
      "Remove records first sealed before TIME (an ISO 8601 date or time)",
    group: "Options of prune",
  },
  keep: {
    type: "string",
    placeholder: "DURATION",
    description:
      "Remove records first sealed more than DURATION ago (90s, 15m, 2h, 30d)",
    group: "Options of prune",
  },
} as const satisfies OptionTable;

const SOURCE_OPTION = {
  source: {
    type: "string",
    placeholder: "NAME",
    description:
      "Only this source (cat), the source (checkpoint, proof): its name, or PEER/NAME",
    group: "Options of cat, checkpoint and proof",
  },
} as const satisfies OptionTable;

const PROOF_OPTIONS = {
  ...SOURCE_OPTION,
  seq: {
    type: "integer",
    placeholder: "N",
    min: 1,
    description:
      "Prove that record N is in the tree of the latest checkpoint (an inclusion proof)",
    group: "Options of proof",
  },
  from: {
    type: "integer",
    placeholder: "SIZE",
    min: 0,
    description:
      "Prove that the latest checkpoint extends the tree of SIZE records (a consistency proof)",
    group: "Options of proof",
  },
} as const satisfies OptionTable;

const CAT_OPTIONS = {
  ...SOURCE_OPTION,
  since: {
    type: "string",
    placeholder: "TIME",
    description:
      "Only records received at or after TIME: an ISO 8601 date or time, or a duration ago such as 90s, 15m, 2h, 7d",
    group: "Options of cat",
  },
  until: {
    type: "string",
    placeholder: "TIME",
    description: "Only records received before TIME (as --since)",
    group: "Options of cat",
  },
  json: {
    type: "boolean",
    description:
      "One JSON object per record: source, peer, identity, name, seq, ts, recvTs, line (lineBase64 too if it is not UTF-8), partial",
    group: "Options of cat",
  },
  follow: {
    type: "boolean",
    short: "f",
    description:
      "Then keep printing new records as they arrive, until interrupted",
    group: "Options of cat",
  },
} as const satisfies OptionTable;

const SUBCOMMANDS = [
  "init",
  "verify",
  "ls",
  "cat",
  "prune",
  "checkpoint",
  "proof",
  "export",
  "import",
] as const;

/** `moat vault`'s options (by subcommand), usage and help. */
export const VAULT: CommandSpec = {
  name: "vault",
  summary:
    "Keep a vault: moat vault init|verify|ls|cat|prune|checkpoint|proof|export|import DIR",
  usage: [
    "vault init DIR",
    "vault verify DIR [--key KEY|--key-file FILE] [--min-retain DURATION]",
    "vault verify DIR --checkpoint FILE... [--key KEY]",
    "vault verify DIR --witness-key KEY... [--witness-grace DURATION]",
    "vault ls DIR",
    "vault cat DIR [--source NAME] [--since TIME] [--until TIME] [--json]",
    "vault cat DIR --follow [--source NAME] [--since TIME] [--json]",
    "vault prune DIR --before TIME | --keep DURATION [--key KEY]",
    "vault checkpoint DIR --source NAME",
    "vault proof DIR --source NAME --seq N | --from SIZE",
    "vault verify|ls|cat|checkpoint|proof nats://HOST:PORT,… [OPTIONS]",
    "vault export nats://HOST:PORT,… DIR [--nats-creds FILE]",
    "vault import DIR nats://HOST:PORT,… [--nats-creds FILE]",
  ],
  description:
    `init    makes DIR a sealed vault (or seals an unsealed one) and prints its
        verification key once: keep it off the vault host. moat serve --vault
        then seals every --seal-interval with a key that evolves one way.
        It also prints the public key of the vault's checkpoints (stderr).
verify  checks every record's checksum and hash chain, and with the key every
        seal; recomputes each source's Merkle tree and checks it against the
        stored tree, the vault's checkpoints and every --checkpoint FILE
        (a vault rolled back, cut or rewritten fails naming FILE); with
        --witness-key, that each source's latest checkpoint is cosigned by
        that witness and that what it cosigned holds. Exits 0
        only if nothing is damaged, else names the first bad point. Records
        after the last seal are reported as an unsealed tail, pruned ones as
        pruned. On a terminal it shows its progress.
ls      lists the sources in a vault: records kept, size on disk, the
        shipper's time of the first and last record, and last seen (when
        the newest record was received).
cat     prints stored lines in order (per source by sequence number; sources
        merged by receive time). On a terminal, control characters are escaped.
prune   removes old records (whole segments, never a source's newest) of a
        vault no server has open, after verifying it. A sealed vault records
        the prune in a seal first, so verify tells it from a deletion.
        moat serve --retain prunes on its own.
checkpoint  prints a source's latest signed checkpoint (tree size and root
        of its Merkle tree, signed with the vault's checkpoint key), as the
        server logged it.
proof   prints, as JSON, the inclusion proof of record N (--seq), or the
        consistency proof from a tree of SIZE records (--from), to the
        latest checkpoint. Check it anywhere with moat verify-proof.
export  reads a JetStream vault (nats://…) into DIR, a new or empty
        directory: records, checkpoints, and each front door's seals under
        DIR/doors/; skipped messages no front door writes are kept in
        DIR/stream.json. Into a DIR it filled before, it reads only what is
        new, and refuses a stream that was deleted and made again. verify,
        ls, cat, checkpoint and proof take nats://… too: they read the
        stream so into a temporary directory (or --cache DIR) and then run
        as on a directory. verify takes one --key per front door.
import  publishes a directory vault's records, checkpoints and seals into
        a JetStream stream (resuming where the stream ends).`,
  positionals: true,
  options: {
    ...VERIFY_OPTIONS,
    ...PRUNE_OPTIONS,
    ...CAT_OPTIONS,
    ...PROOF_OPTIONS,
    ...NATS_READ_OPTIONS,
  },
  exits: [
    ...COMMON_EXITS,
    {
      code: ExitCode.NotFound,
      description: "cat, checkpoint, proof: --source matches no source",
    },
    {
      code: ExitCode.Integrity,
      description:
        "verify found damage (it names the first bad point) or a --checkpoint the vault does not extend; prune refused a damaged vault; checkpoint, proof: no checkpoint, or the stored tree does not match",
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
  // Verifying and proving hash every record: libcrypto where it loads.
  setNativeSha256(nativeSha256Parts);
  setNativeSha256Batch(nativeSha256Batch);
  const [sub, ...rest] = args;
  if (
    sub === undefined || sub === "-h" || sub === "--help" || sub === "help"
  ) {
    return printLine(formatHelp(VAULT));
  }
  if (
    SUBCOMMANDS.includes(sub as (typeof SUBCOMMANDS)[number]) &&
    (sub === "export" || sub === "import" || rest.some(isNatsUrl))
  ) {
    return await _nats(sub as (typeof SUBCOMMANDS)[number], rest, context);
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
    case "prune": {
      const parsed = parseVault(sub, PRUNE_OPTIONS, rest, context);
      if (parsed) await pruneCommand(parsed.dir, parsed.values);
      return;
    }
    case "checkpoint": {
      const parsed = parseVault(sub, SOURCE_OPTION, rest, context);
      if (parsed) {
        const cp = await latestCheckpoint(
          parsed.dir,
          requireSource(sub, parsed.values.source),
        );
        await writeStdoutText(cp.note);
      }
      return;
    }
    case "proof": {
      const parsed = parseVault(sub, PROOF_OPTIONS, rest, context);
      if (parsed) await proofCommand(parsed.dir, parsed.values);
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
 * A subcommand on a nats:// vault, `export` or `import`: cli/vault_nats.ts,
 * loaded only now (it loads the NATS client).
 */
async function _nats(
  sub: (typeof SUBCOMMANDS)[number],
  rest: string[],
  context: RunContext,
): Promise<void> {
  const nats = await import("./vault_nats.ts");
  const dirCommands: Partial<
    Record<typeof sub, import("./vault_nats.ts").DirCommand>
  > = {
    verify: {
      options: VERIFY_OPTIONS,
      run: (dir, v) =>
        verifyCommand(dir, v as OptionValues<typeof VERIFY_OPTIONS>),
    },
    ls: { options: {}, run: (dir) => lsCommand(dir) },
    cat: {
      options: CAT_OPTIONS,
      run: (dir, v) => catCommand(dir, v as OptionValues<typeof CAT_OPTIONS>),
    },
    checkpoint: {
      options: SOURCE_OPTION,
      run: async (dir, v) => {
        const source = requireSource("checkpoint", v.source as string);
        await writeStdoutText((await latestCheckpoint(dir, source)).note);
      },
    },
    proof: {
      options: PROOF_OPTIONS,
      run: (dir, v) =>
        proofCommand(dir, v as OptionValues<typeof PROOF_OPTIONS>),
    },
  };
  if (sub === "export") return await nats.exportCommand(VAULT, rest, context);
  if (sub === "import") return await nats.importCommand(VAULT, rest, context);
  const command = dirCommands[sub];
  if (command === undefined) {
    throw new UsageError(
      `vault ${sub} works on a directory vault only (a JetStream vault is never pruned; init makes a directory)`,
    );
  }
  await nats.natsReadCommand(VAULT, sub, rest, context, command);
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

/** --source of checkpoint and proof: required, one source. */
function requireSource(sub: string, source: string | undefined): string {
  if (source === undefined) {
    throw new UsageError(`vault ${sub} takes --source NAME`);
  }
  return source;
}

/** `moat vault proof`: the proof as indented JSON on stdout. */
async function proofCommand(
  dir: string,
  values: OptionValues<typeof PROOF_OPTIONS>,
): Promise<void> {
  const source = requireSource("proof", values.source);
  if ((values.seq === undefined) === (values.from === undefined)) {
    throw new UsageError("vault proof takes one of --seq N or --from SIZE");
  }
  const proof = values.seq !== undefined
    ? await proveInclusion(dir, source, values.seq)
    : await proveConsistency(dir, source, values.from!);
  await writeStdoutText(JSON.stringify(proof, null, 2) + "\n");
}

async function initCommand(dir: string): Promise<void> {
  const made = await initVault(dir);
  printLine(made.verificationKey);
  printToStderr(
    `Checkpoint key (public; give it to shippers with --vault-key, and to moat verify-proof): ${made.checkpointKey}`,
  );
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
  printLine(
    ["PEER", "SOURCE", "RECORDS", "SIZE", "FIRST", "LAST", "LAST-SEEN"]
      .join("\t"),
  );
  for (const r of rows) {
    printLine(
      [
        escapeText(
          r.identity === undefined ? r.peer : `${r.peer}[${r.identity}]`,
        ),
        escapeText(r.name),
        r.records,
        formatBytes(r.bytes),
        _iso(r.firstTs),
        _iso(r.lastTs),
        _iso(r.lastRecvTs),
      ].join("\t"),
    );
  }
}

/** A time as ISO 8601 UTC, or "-" for none (0, or one out of range). */
function _iso(t: number): string {
  const date = new Date(t);
  return t === 0 || Number.isNaN(date.getTime()) ? "-" : date.toISOString();
}

async function catCommand(
  dir: string,
  values: OptionValues<typeof CAT_OPTIONS>,
): Promise<void> {
  const source = values.source;
  if (source !== undefined && (await matchSources(dir, source)).length === 0) {
    throw new MoatError(
      "ERR_NO_SOURCE",
      `No source in vault "${escapeText(dir)}" matches --source "${
        escapeText(source)
      }" (see moat vault ls)`,
      ExitCode.NotFound,
    );
  }
  const since = values.since === undefined
    ? undefined
    : parseTime("--since", values.since);
  const until = values.until === undefined
    ? undefined
    : parseTime("--until", values.until);
  if (values.follow && until !== undefined) {
    throw new UsageError("--follow and --until cannot be combined");
  }
  // --follow runs until a signal; each ends it cleanly (exit 0).
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  // Windows knows only SIGINT (Ctrl-C) of these.
  const signals = process.platform === "win32"
    ? ["SIGINT"] as const
    : ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  if (values.follow) { for (const s of signals) process.on(s, onSignal); }
  try {
    // A log line is attacker-controlled: escaped on a terminal; into a pipe
    // as stored but with line feeds inside a record written as \n, and
    // labelled with its source whenever more than one matches; as JSON with
    // every terminal control escaped (lib/vault/read.ts).
    for await (
      const chunk of catRecords(dir, {
        ...(source !== undefined && { source }),
        ...(since !== undefined && { since }),
        ...(until !== undefined && { until }),
        json: values.json,
        follow: values.follow,
        signal: stop.signal,
        terminal: process.stdout.isTTY === true,
      })
    ) {
      await writeStdout(chunk);
    }
  } finally {
    if (values.follow) { for (const s of signals) process.off(s, onSignal); }
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
  return parseTime("--since", text);
}

/**
 * Parses a time option: ISO 8601, or a duration ago (90s, 15m, 2h, 7d).
 *
 * @param option The option's name, for the error.
 * @param text The value.
 * @returns Milliseconds since the epoch.
 * @throws {UsageError} If it is neither.
 */
export function parseTime(option: string, text: string): number {
  if (/^\d+[smhd]$/.test(text)) {
    return Date.now() - parseDuration(option, text);
  }
  const t = Date.parse(text);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(t)) {
    throw new UsageError(
      `Invalid ${option} "${
        escapeText(text)
      }": expected an ISO 8601 time or a duration like 15m`,
    );
  }
  return t;
}

/**
 * Parses a duration: a positive whole number of seconds, minutes, hours or
 * days (90s, 15m, 2h, 30d).
 *
 * @example
 * ```ts
 * import { parseDuration } from "./vault.ts";
 * import assert from "node:assert/strict";
 * assert.equal(parseDuration("--retain", "30d"), 30 * 86_400_000);
 * ```
 *
 * @param option The option's name, for the error.
 * @param text The value.
 * @returns Milliseconds.
 * @throws {UsageError} If it is not one.
 */
export function parseDuration(option: string, text: string): number {
  const m = /^(\d+)(s|m|h|d)$/.exec(text);
  const ms = m
    ? Number(m[1]) *
      { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2] as "s" | "m" | "h" | "d"]
    : NaN;
  if (!Number.isSafeInteger(ms) || ms <= 0) {
    throw new UsageError(
      `Invalid ${option} "${
        escapeText(text)
      }": expected a duration like 90s, 15m, 2h or 30d`,
    );
  }
  return ms;
}

/** A small text file named by an option (a checkpoint). */
function readText(option: string, file: string): string {
  try {
    const stat = fs.statSync(file);
    if (stat.size > 64 * 1024) {
      throw new UsageError(
        `${option} "${
          escapeText(file)
        }" is larger than 64 KiB: not a checkpoint`,
      );
    }
    return fs.readFileSync(file, "utf8");
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(
      `Cannot read ${option} "${escapeText(file)}": ${describeFsError(err)}`,
    );
  }
}

/** The verification key from --key or --key-file, if given. */
function readKey(
  values: {
    key?: string | string[] | undefined;
    "key-file"?: string | undefined;
  },
): string | undefined {
  const key = Array.isArray(values.key) ? values.key[0] : values.key;
  if (key !== undefined && values["key-file"] !== undefined) {
    throw new UsageError("Give --key or --key-file, not both");
  }
  if (values["key-file"] === undefined) return key;
  try {
    return fs.readFileSync(values["key-file"], "utf8");
  } catch (err) {
    throw new UsageError(
      `Cannot read --key-file "${escapeText(values["key-file"])}": ${
        describeFsError(err)
      }`,
    );
  }
}

/**
 * Verification progress on stderr when it is a terminal: records and bytes
 * checked, redrawn in place at most 10 times a second, cut to the width;
 * nothing otherwise.
 */
function verifyProgress(): {
  update?: (progress: VerifyProgress) => void;
  end(): void;
} {
  if (process.stderr.isTTY !== true) return { end() {} };
  let last = 0;
  let drawn = false;
  return {
    update(p: VerifyProgress) {
      const now = performance.now();
      if (now - last < 100 && p.bytes < p.totalBytes) return;
      last = now;
      const share = p.totalBytes > 0
        ? ` (${Math.min(100, Math.floor(p.bytes / p.totalBytes * 100))}%)`
        : "";
      const text = `verifying: ${p.records} records, ${
        formatBytes(p.bytes)
      } of ${formatBytes(p.totalBytes)}${share}`;
      const width = Math.max(10, (process.stderr.columns ?? 80) - 1);
      process.stderr.write(`\r${text.slice(0, width)}\x1b[K`);
      drawn = true;
    },
    end() {
      if (drawn) process.stderr.write("\r\x1b[K");
    },
  };
}

/** Runs verifyVault with progress on a terminal; a bad key is a usage error. */
async function runVerify(
  dir: string,
  options: {
    key?: string | undefined;
    keys?: string[];
    minRetainMs?: number | undefined;
    checkpoints?: { file: string; note: string }[];
    witnesses?: Verifier[];
    witnessGraceMs?: number | undefined;
  },
): Promise<VerifyReport> {
  const progress = verifyProgress();
  try {
    return await verifyVault(dir, {
      ...(options.key !== undefined && { key: options.key }),
      ...(options.keys !== undefined && { keys: options.keys }),
      ...(options.checkpoints && { checkpoints: options.checkpoints }),
      ...(options.witnesses && { witnesses: options.witnesses }),
      ...(options.witnessGraceMs !== undefined &&
        { witnessGraceMs: options.witnessGraceMs }),
      ...(options.minRetainMs !== undefined &&
        { minRetainMs: options.minRetainMs }),
      ...(progress.update && { onProgress: progress.update }),
    });
  } catch (err) {
    if (err instanceof TypeError) throw new UsageError(err.message);
    throw err;
  } finally {
    progress.end();
  }
}

/** Prints what verify found wrong, one line each. */
function printProblems(report: VerifyReport): void {
  for (const p of report.problems) {
    printLine(`DAMAGED: ${escapeText(p.message)}`);
  }
}

/** `moat vault verify`: prints the report; exits 5 (integrity) on damage. */
async function verifyCommand(
  dir: string,
  values: OptionValues<typeof VERIFY_OPTIONS>,
): Promise<void> {
  // One key per front door of a nats:// vault (--key-file adds one).
  const more = values.key.slice(values["key-file"] === undefined ? 1 : 0);
  const key = values.key.length > 0 || values["key-file"] !== undefined
    ? readKey({ "key-file": values["key-file"], key: values.key[0] })
    : undefined;
  const minRetainMs = values["min-retain"] === undefined
    ? undefined
    : parseDuration("--min-retain", values["min-retain"]);
  const checkpoints = values.checkpoint.map((file) => ({
    file,
    note: readText("--checkpoint", file),
  }));
  const witnesses = values["witness-key"].map((text) => {
    let w;
    try {
      w = parseVerifier(text);
    } catch (error) {
      throw new UsageError(`--witness-key: ${(error as Error).message}`);
    }
    if (w.type !== COSIGNATURE_V1) {
      throw new UsageError(
        `--witness-key: ${w.name} is not a witness key (a cosignature/v1 key, as moat witness --init prints it)`,
      );
    }
    return w;
  });
  const witnessGraceMs = values["witness-grace"] === undefined
    ? undefined
    : parseDuration("--witness-grace", values["witness-grace"]);
  const report = await runVerify(dir, {
    key,
    keys: more,
    minRetainMs,
    checkpoints,
    witnesses,
    witnessGraceMs,
  });
  const iso = (t: number) => new Date(t).toISOString();
  printLine(
    `vault ${report.id}: ${report.seals} seal(s)${
      report.lastSealTime !== undefined
        ? `, last at ${iso(report.lastSealTime)}`
        : ""
    }${report.keyed ? ", verified with the key" : ""}`,
  );
  for (const s of report.sources) {
    const label = escapeText(s.label);
    const tail = s.unsealed > 0
      ? `, unsealed tail (${s.unsealed} records)`
      : "";
    printLine(`  ${label}: ${s.records} records, ${s.sealedSeq} sealed${tail}`);
    const pruned = s.pruned;
    if (pruned) {
      printLine(
        `  ${label}: records 1 to ${pruned.throughSeq} pruned (first ${
          report.seals > 0 ? "sealed" : "received"
        } before ${iso(pruned.before)}; pruned at ${iso(pruned.time)}${
          pruned.epoch !== undefined ? `, recorded in seal ${pruned.epoch}` : ""
        })${
          pruned.pending
            ? `; ${pruned.pending} of them still on disk, removed by the next prune`
            : ""
        }`,
      );
    }
    const tree = s.tree;
    if (tree?.unchecked) {
      printLine(`  ${label}: Merkle tree not checked: ${tree.unchecked}`);
    } else if (tree?.noTree && s.records > 0) {
      printLine(
        `  ${label}: no stored Merkle tree yet (the server builds it at its next start); recomputed from the records`,
      );
    } else if (tree && tree.checkpoints > 0) {
      printLine(
        `  ${label}: Merkle tree of ${tree.size} records matches ${tree.checkpoints} checkpoint(s)${
          tree.outside > 0
            ? `, ${tree.outside} of them held outside the vault (--checkpoint, a witness)`
            : ""
        }`,
      );
    }
    if (s.torn) {
      printLine(
        `  ${label}: ${s.torn.bytes} bytes after the last record are not a whole record ` +
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
  printProblems(report);
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

/**
 * `moat vault prune`: takes the vault's lock, verifies it (with the key if
 * given), and only then prunes; prints what went.
 */
async function pruneCommand(
  dir: string,
  values: OptionValues<typeof PRUNE_OPTIONS>,
): Promise<void> {
  if ((values.before === undefined) === (values.keep === undefined)) {
    throw new UsageError(
      "vault prune takes one of --before TIME or --keep DURATION",
    );
  }
  const before = values.before !== undefined
    ? parseTime("--before", values.before)
    : Date.now() - parseDuration("--keep", values.keep!);
  const key = readKey(values);
  let vault;
  try {
    // No seal at open, no timer: the prune writes its own seal.
    vault = await openVault(dir, { sealIntervalMs: 0 });
  } catch (err) {
    if (err instanceof MoatError && err.code === "ERR_LOCKED") {
      throw new MoatError(
        "ERR_LOCKED",
        `${err.message}: stop the server first, or let moat serve --retain prune it`,
        err.exitCode,
      );
    }
    throw err;
  }
  let info;
  try {
    // Pruned records can never be checked again: check them now.
    const report = await runVerify(dir, { key });
    if (!report.ok) {
      printProblems(report);
      throw new MoatError(
        "ERR_INTEGRITY",
        `Vault "${escapeText(dir)}" failed verification: nothing was pruned`,
        ExitCode.Integrity,
      );
    }
    if (!report.keyed && vault.sealed) {
      printToStderr(
        "moat: verified without --key: checksums and chains only, seals not checked",
      );
    }
    info = await vault.prune({ before });
  } finally {
    await vault.close();
  }
  const when = new Date(before).toISOString();
  const first = vault.sealed ? "first sealed" : "received";
  for (const { source, reason } of info.skipped) {
    printLine(`  ${escapeText(sourceLabel(source))}: left alone: ${reason}`);
  }
  if (info.sources.length === 0) {
    printLine(`Nothing to prune: no whole segment ${first} before ${when}`);
    return;
  }
  printLine(
    `Pruned ${info.records} records (${
      formatBytes(info.bytes)
    }) ${first} before ${when} from ${info.sources.length} source(s)${
      info.epoch !== undefined ? `, recorded in seal ${info.epoch}` : ""
    }:`,
  );
  for (const s of info.sources) {
    printLine(
      `  ${
        escapeText(sourceLabel(s.source))
      }: records 1 to ${s.throughSeq} are gone (${s.records} now, ${s.segments} segment(s))`,
    );
  }
}
