/**
 * `moat verify-proof`: checks a proof printed by `moat vault proof` offline,
 * with only the vault's public checkpoint key, on a machine that never saw
 * the vault.
 *
 * @module
 */

import * as fs from "node:fs";
import { ExitCode, UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { verifyProof } from "../lib/vault/proof.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  describeFsError,
  formatHelp,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine } from "./output.ts";

const VERIFY_PROOF_OPTIONS = {
  key: {
    type: "string",
    placeholder: "KEY",
    description:
      "The vault's checkpoint key (public: printed by moat vault init, in vault.json as checkpointKey)",
  },
  "key-file": {
    type: "file",
    placeholder: "FILE",
    description: "Read the checkpoint key from FILE",
  },
  checkpoint: {
    type: "file",
    placeholder: "FILE",
    description:
      "For a consistency proof: the checkpoint you hold; it must be the proof's starting point",
  },
} as const satisfies OptionTable;

/** `moat verify-proof`'s options, usage and help. */
export const VERIFY_PROOF: CommandSpec = {
  name: "verify-proof",
  summary: "Check a vault's proof offline: moat verify-proof --key KEY PROOF",
  usage: [
    "verify-proof --key KEY|--key-file FILE PROOF.json",
    "verify-proof --key KEY --checkpoint HELD PROOF.json",
  ],
  description:
    `Checks a proof from moat vault proof (a file, or - for stdin) with only the
vault's public checkpoint key: the checkpoint's signature, and that the proof
leads to its root. An inclusion proof shows that the record it holds (printed)
is in the vault's tree at that size; a consistency proof that the newer tree
extends the older one (with --checkpoint, the one you hold).`,
  positionals: true,
  options: VERIFY_PROOF_OPTIONS,
  exits: [
    ...COMMON_EXITS,
    {
      code: ExitCode.Integrity,
      description:
        "the proof or its checkpoint does not verify (malformed, wrong key, or a fork)",
    },
  ],
};

/** Bytes of a proof file read at most: a proof is a few KiB. */
const MAX_PROOF_BYTES = 1024 * 1024;

function readInput(file: string, what: string): string {
  try {
    const bytes = fs.readFileSync(file === "-" ? 0 : file);
    if (bytes.length > MAX_PROOF_BYTES) {
      throw new UsageError(`${what} "${escapeText(file)}" is over 1 MiB`);
    }
    return new TextDecoder().decode(bytes);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(
      `Cannot read ${what} "${escapeText(file)}": ${describeFsError(err)}`,
    );
  }
}

/**
 * Runs `moat verify-proof`.
 *
 * @param args The arguments after "verify-proof".
 * @param context The environment.
 * @throws {MoatError} ERR_CHECKPOINT (exit 5) when the proof does not verify.
 */
export function verifyProofCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(VERIFY_PROOF, args, context);
  if (parsed.help) {
    printLine(formatHelp(VERIFY_PROOF));
    return Promise.resolve();
  }
  const values = parsed.values as {
    key?: string;
    "key-file"?: string;
    checkpoint?: string;
  };
  if (parsed.positionals.length !== 1) {
    throw new UsageError("verify-proof takes one PROOF file (or -)");
  }
  if ((values.key === undefined) === (values["key-file"] === undefined)) {
    throw new UsageError("verify-proof takes one of --key or --key-file");
  }
  const key = values.key ?? readInput(values["key-file"]!, "--key-file");
  const file = parsed.positionals[0]!;
  let proof: unknown;
  try {
    proof = JSON.parse(readInput(file, "proof"));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`Proof "${escapeText(file)}" is not JSON`);
  }
  const held = values.checkpoint === undefined
    ? undefined
    : readInput(values.checkpoint, "--checkpoint");
  const shown = verifyProof(proof, key, held === undefined ? {} : { held });
  if (shown.type === "inclusion") {
    const r = shown.record;
    printLine(
      `OK: record ${r.seq} is leaf ${shown.index} of the tree of ${shown.treeSize} records of ${shown.origin}`,
    );
    printLine(
      `  ts ${new Date(r.ts).toISOString()}, received ${
        new Date(r.recvTs).toISOString()
      }${r.partial ? ", partial" : ""}`,
    );
    printLine(`  ${escapeText(new TextDecoder().decode(r.line))}`);
  } else {
    printLine(
      `OK: the tree of ${shown.treeSize} records of ${shown.origin} extends the tree of ${shown.from}${
        held === undefined
          ? ` (root ${
            Buffer.from(shown.fromRoot).toString("base64")
          }: compare it with the checkpoint you hold, or pass it with --checkpoint)`
          : ", the checkpoint you hold"
      }`,
    );
  }
  return Promise.resolve();
}
