/**
 * Taking files over from an earlier state. Before sources were per file,
 * `moat ship FILE...` shipped every file into one source named after the
 * host. A file that now goes to a source of its own starts where that
 * state stopped spooling it, and the lines the earlier state still holds
 * unacknowledged are sent under the earlier source name: nothing is lost
 * and nothing is read twice.
 *
 * @module
 */

import type { FilePosition } from "./follow.ts";
import { openSpool } from "./spool.ts";
import { readShipState } from "./state.ts";

/** What an earlier state knows about files that move to other sources. */
export interface Takeover {
  /** The earlier state file. */
  stateFile: string;
  /** Its source name. */
  source: string;
  /** Where each file was spooled up to, by absolute path. */
  positions: Map<string, FilePosition>;
  /** Records in its spool not yet acknowledged by the server. */
  unacked: number;
}

/**
 * Reads where an earlier state of `source` stopped spooling `paths`.
 *
 * @param stateFile The earlier state file (it may not exist).
 * @param options Its source name, and the files moving away from it.
 * @returns What it knows, or undefined if there is no such state or it
 * never shipped any of `paths`.
 * @throws {MoatError} `ERR_LOCKED` while another shipper uses that state;
 * `ERR_CORRUPT` for a damaged state or spool.
 */
export async function readTakeover(
  stateFile: string,
  options: { source: string; paths: readonly string[] },
): Promise<Takeover | undefined> {
  const state = await readShipState(stateFile);
  if (state === undefined || state.source !== options.source) return undefined;
  const known = new Set(state.inputs.map((i) => i.path));
  const paths = options.paths.filter((p) => known.has(p));
  if (paths.length === 0) return undefined;
  const spool = await openSpool(stateFile, { source: options.source });
  try {
    const positions = new Map<string, FilePosition>();
    for (const path of paths) {
      const { position } = await spool.input(path);
      if (position !== undefined) positions.set(path, position);
    }
    return {
      stateFile,
      source: options.source,
      positions,
      unacked: spool.lastSeq - spool.ackedSeq,
    };
  } finally {
    await spool.close();
  }
}
