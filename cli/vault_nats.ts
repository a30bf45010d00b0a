/**
 * `moat vault ls|cat|verify|proof|checkpoint nats://…`, `moat vault export
 * nats://… DIR` and `moat vault import DIR nats://…`: a JetStream vault read
 * into a directory (lib/vault/nats/read.ts) and then the directory code,
 * so a stream answers exactly as a directory vault does. Loaded only for a
 * nats:// address, so no other command loads the NATS client.
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import { UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { materializeStream, tempCopyPath } from "../lib/vault/nats/read.ts";
import { importVault } from "../lib/vault/nats/import.ts";
import { isNatsUrl } from "../lib/vault/nats/url.ts";
import {
  type CommandSpec,
  formatHelp,
  type OptionTable,
  type OptionValues,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { NATS_READ_OPTIONS } from "./vault_nats_options.ts";
import { printLine, printToStderr } from "./output.ts";

type NatsValues = OptionValues<typeof NATS_READ_OPTIONS>;

/** A subcommand's directory code, as cli/vault.ts runs it. */
export interface DirCommand {
  /** Its options (besides the NATS ones). */
  options: OptionTable;
  /** Runs it on a vault directory. */
  run(dir: string, values: Record<string, unknown>): Promise<void>;
}

/**
 * Runs `moat vault <sub>` whose vault is a `nats://…` address: reads the
 * stream into `--cache DIR` or a temporary directory (removed after), then
 * runs the directory code on it.
 *
 * @param spec The `moat vault` spec (help, usage).
 * @param sub The subcommand.
 * @param args Its arguments.
 * @param context The environment.
 * @param command The directory code of `sub`.
 * @returns When done.
 */
export async function natsReadCommand(
  spec: CommandSpec,
  sub: string,
  args: string[],
  context: RunContext,
  command: DirCommand,
): Promise<void> {
  const options = { ...command.options, ...NATS_READ_OPTIONS };
  const parsed = parseCommand(
    { ...spec, name: `vault ${sub}`, options },
    args,
    context,
  );
  if (parsed.help) return printLine(formatHelp(spec));
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`vault ${sub} takes one nats://… address`);
  }
  const values = parsed.values as OptionValues<typeof options>;
  const url = parsed.positionals[0]!;
  if ((values as { follow?: boolean }).follow) {
    // The copy is read once: following it would never show a new record.
    throw new UsageError(
      "vault cat --follow reads a directory: follow a front door's --vault-cache instead of nats://…",
    );
  }
  const keep = values.cache;
  const dir = keep ?? tempCopyPath(os.tmpdir());
  try {
    await _materialize(url, dir, values);
    await command.run(dir, values);
  } finally {
    if (keep === undefined) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `moat vault export nats://… DIR`: the stream into DIR (new or empty), with
 * its checkpoints and every front door's seals; then `moat vault verify DIR
 * --key …` checks it offline.
 *
 * @param spec The `moat vault` spec.
 * @param args The arguments after "export".
 * @param context The environment.
 * @returns When done.
 */
export async function exportCommand(
  spec: CommandSpec,
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(
    { ...spec, name: "vault export", options: NATS_READ_OPTIONS },
    args,
    context,
  );
  if (parsed.help) return printLine(formatHelp(spec));
  const [url, dir, ...more] = parsed.positionals;
  if (
    url === undefined || dir === undefined || more.length > 0 || !isNatsUrl(url)
  ) {
    throw new UsageError("vault export takes nats://… and DIR");
  }
  if (parsed.values.cache !== undefined) {
    throw new UsageError("vault export writes DIR: --cache does not apply");
  }
  const file = await _materialize(url, dir, parsed.values);
  const records = file.messages;
  printLine(
    `Exported stream "${
      escapeText(file.stream)
    }" (vault ${file.meta.vaultId}, ${records} messages to stream sequence ${file.lastSeq}, seals of ${
      Object.keys(file.doors).length
    } front door(s)) into "${escapeText(dir)}"`,
  );
}

/**
 * `moat vault import DIR nats://…`: a directory vault into the stream
 * (created when the credentials may and it is missing).
 *
 * @param spec The `moat vault` spec.
 * @param args The arguments after "import".
 * @param context The environment.
 * @returns When done.
 */
export async function importCommand(
  spec: CommandSpec,
  args: string[],
  context: RunContext,
): Promise<void> {
  const options = {
    ...NATS_READ_OPTIONS,
    replicas: {
      type: "integer",
      placeholder: "N",
      min: 1,
      max: 5,
      default: 3,
      description: "With import: replicas of the stream, if import creates it",
      group: "Options with a nats:// vault",
    },
  } as const satisfies OptionTable;
  const parsed = parseCommand(
    { ...spec, name: "vault import", options },
    args,
    context,
  );
  if (parsed.help) return printLine(formatHelp(spec));
  const [dir, url, ...more] = parsed.positionals;
  if (
    url === undefined || dir === undefined || more.length > 0 || !isNatsUrl(url)
  ) {
    throw new UsageError("vault import takes DIR and nats://…");
  }
  if (!fs.existsSync(`${dir}/VAULT`)) {
    throw new UsageError(`"${escapeText(dir)}" is not a moat vault`);
  }
  const v = parsed.values;
  _checkTls(v);
  const report = await importVault({
    url,
    dir,
    stream: v.stream,
    replicas: v.replicas,
    ..._connect(v),
  });
  printLine(
    `Imported "${escapeText(dir)}" into stream "${
      escapeText(v.stream)
    }": ${report.records} records in ${report.messages} messages from ${report.sources} source(s), ${report.checkpoints} checkpoint(s), ${report.seals} seal(s)${
      report.door !== undefined ? ` (front door ${report.door})` : ""
    }`,
  );
}

async function _materialize(url: string, dir: string, v: NatsValues) {
  _checkTls(v);
  const file = await materializeStream({
    url,
    dir,
    stream: v.stream,
    ..._connect(v),
  });
  const skipped = file.problems.length;
  if (skipped > 0) {
    printToStderr(
      `moat: stream "${
        escapeText(file.stream)
      }": ${skipped} message(s) skipped that no front door writes (moat vault verify reports them)`,
    );
  }
  if (file.unprotected !== undefined) {
    printToStderr(`moat: ${escapeText(file.unprotected)}`);
  }
  return file;
}

function _connect(v: NatsValues) {
  return {
    creds: v["nats-creds"],
    tlsCa: v["nats-tls-ca"],
    tlsCert: v["nats-tls-cert"],
    tlsKey: v["nats-tls-key"],
  };
}

function _checkTls(v: NatsValues): void {
  if (
    (v["nats-tls-cert"] === undefined) !== (v["nats-tls-key"] === undefined)
  ) {
    throw new UsageError("--nats-tls-cert and --nats-tls-key go together");
  }
}
