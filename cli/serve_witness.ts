/**
 * `moat serve --witness`: the options that name the vault's witnesses, and
 * turning them into the {@linkcode WitnessTarget}s of a `WitnessFeeder`.
 *
 * @module
 */

import { parseServerAddr } from "../lib/client.ts";
import { COSIGNATURE_V1, parseVerifier } from "../lib/checkpoint.ts";
import { parseFingerprint } from "../lib/cert.ts";
import { UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { getNet } from "../lib/net/mod.ts";
import { VERSION } from "../lib/version.ts";
import { DEFAULT_WITNESS_PORT } from "../lib/limits.ts";
import { DEFAULT_WITNESS_TIMEOUT_MS } from "../lib/witness/client.ts";
import type { WitnessTarget } from "../lib/witness/feeder.ts";
import type { OptionTable } from "./options.ts";

/** Options `moat serve` adds for witnesses. */
export const SERVE_WITNESS_OPTIONS = {
  witness: {
    type: "string",
    placeholder: "HOST[:PORT]",
    multiple: true,
    description:
      `Send each vault source's checkpoint, every --seal-interval it grew, to this moat witness (port ${DEFAULT_WITNESS_PORT} by default) and keep its cosignature in the vault; needs --vault and a --witness-key per --witness`,
  },
  "witness-key": {
    type: "string",
    placeholder: "KEY",
    multiple: true,
    description:
      "The cosignature key of the witness given in the same position (what moat witness --init prints); cosignatures that do not verify with it are refused",
  },
  "witness-pin": {
    type: "string",
    placeholder: "FP",
    multiple: true,
    description:
      "Reach the witnesses over TLS 1.3 and accept only a certificate with this fingerprint (sha256:…)",
  },
} as const satisfies OptionTable;

/** Parsed values of {@linkcode SERVE_WITNESS_OPTIONS}, and `--vault`. */
export interface ServeWitnessValues {
  witness: string[];
  "witness-key": string[];
  "witness-pin": string[];
  vault?: string | undefined;
}

/**
 * The witnesses of `moat serve`, checked.
 *
 * @param values The parsed options.
 * @returns One target per `--witness`, with its key; empty without any.
 * @throws {UsageError} Without `--vault`, with unpaired keys, or for a key,
 * address or fingerprint that does not parse.
 */
export function witnessTargets(values: ServeWitnessValues): WitnessTarget[] {
  const addrs = values.witness;
  const keys = values["witness-key"];
  const pins = values["witness-pin"].map((fp) =>
    parseFingerprint(fp, "--witness-pin")
  );
  if (addrs.length === 0) {
    if (keys.length > 0 || pins.length > 0) {
      throw new UsageError("--witness-key and --witness-pin need --witness");
    }
    return [];
  }
  if (values.vault === undefined) {
    throw new UsageError(
      "--witness needs --vault DIR (witnesses cosign the vault's checkpoints)",
    );
  }
  if (keys.length !== addrs.length) {
    throw new UsageError(
      `Give one --witness-key per --witness, in the same order (${addrs.length} witnesses, ${keys.length} keys)`,
    );
  }
  const net = getNet();
  return addrs.map((addr, i) => {
    const key = keys[i]!;
    try {
      if (parseVerifier(key).type !== COSIGNATURE_V1) {
        throw new Error("not a witness cosignature key");
      }
    } catch (err) {
      throw new UsageError(
        `Invalid --witness-key "${escapeText(key)}": ${(err as Error).message}`,
      );
    }
    return {
      client: {
        net,
        server: parseServerAddr(addr, DEFAULT_WITNESS_PORT),
        version: VERSION,
        timeoutMs: DEFAULT_WITNESS_TIMEOUT_MS,
        ...(pins.length > 0 && { tls: { trust: { kind: "pin", pins } } }),
      },
      key,
    };
  });
}
