/**
 * `stream.json`: what reading a JetStream vault into a directory found
 * (`lib/vault/nats/read.ts` writes it): the stream, its meta, how far it was
 * read, and every message skipped because it is not as a front door writes
 * it. `verify` reports those as damage (kind `stream`). No NATS client here.
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { VerifyProblem } from "./_verify_seals.ts";

/** The file's name in the vault directory. */
export const STREAM_FILE = "stream.json";

/** Something in the stream that is not as a front door writes it. */
export interface StreamProblem {
  /** What is wrong, naming the message. */
  message: string;
  /** The message's stream sequence number. */
  streamSeq?: number;
  /** The source's label, if the message names one. */
  source?: string;
}

/** What `stream.json` holds. */
export interface StreamFile {
  version: 1;
  /** The stream's name. */
  stream: string;
  /** When the stream was created (JetStream's stream info). */
  created?: string;
  /** The stream's meta: format, vault id, checkpoint key. */
  meta: { format: number; vaultId: string; checkpointKey: string };
  /** The last stream sequence read. */
  lastSeq: number;
  /** Messages read. */
  messages: number;
  /** Seals read per front door. */
  doors: Record<string, number>;
  /**
   * Why the stream's config does not protect what it holds (deny_delete or
   * deny_purge off, roll-ups on, limits that drop messages), if it does not.
   */
  unprotected?: string;
  /** Messages skipped, and why (with summaries: too many, checkpoints without records). */
  problems: StreamProblem[];
  /** Where the read stopped, for the next read into the same directory (`--cache`). */
  read?: {
    /** Per source id, the stream sequence of its last message applied. */
    sources: Record<string, number>;
    /** The skipped messages listed (without the summaries). */
    skipped: StreamProblem[];
    /** Skipped messages beyond those. */
    more: number;
  };
}

/**
 * The problems `stream.json` records, as verify problems: each skipped
 * message, and an unprotected stream. None without the file (a directory
 * vault); a file that cannot be read or parsed is itself one.
 *
 * @param root The vault directory.
 * @returns The problems.
 */
export async function readStreamProblems(
  root: string,
): Promise<VerifyProblem[]> {
  const file = join(root, STREAM_FILE);
  let parsed: Partial<StreamFile>;
  try {
    parsed = JSON.parse(await readFile(file, "utf8"));
  } catch (error) {
    if ((error as { code?: string }).code === "ENOENT") return [];
    return [{
      kind: "stream",
      message: `The stream record "${file}" cannot be read: ${
        (error as Error).message
      }`,
      file,
    }];
  }
  const out: VerifyProblem[] = [];
  if (typeof parsed.unprotected === "string") {
    out.push({
      kind: "stream",
      message:
        `Stream "${parsed.stream}" does not protect its records: ${parsed.unprotected}`,
      file,
    });
  }
  if (!Array.isArray(parsed.problems)) {
    out.push({
      kind: "stream",
      message: `"${file}" lists no problems field`,
      file,
    });
    return out;
  }
  for (const p of parsed.problems) {
    out.push({
      kind: "stream",
      message: String(p?.message),
      ...(typeof p?.source === "string" && { source: p.source }),
      file,
    });
  }
  return out;
}
