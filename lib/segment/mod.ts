/**
 * Segmented, checksummed, append-only record logs: the storage under the
 * vault (one log per source, one for seals) and the shipper's spool.
 *
 * - `codec.ts`: the segment and record headers and their checks, pure
 *   functions over bytes;
 * - `scanner.ts`: listing and reading segment files;
 * - `log.ts`: `SegmentLog`, a writer with group commit and torn-tail
 *   recovery (`recover.ts`); `commit_group.ts`: the group commit loop and
 *   the bound on open files;
 * - `fs.ts`: directory fsync, atomic replacement, the single-writer lock;
 * - `crc32c.ts`: the checksum.
 *
 * The byte layout is documented in `docs/VAULT.md`.
 *
 * @module
 */

export * from "./codec.ts";
export * from "./commit_group.ts";
export * from "./crc32c.ts";
export * from "./fs.ts";
export { SegmentLog } from "./log.ts";
export type {
  ChunkNote,
  ClosedSegment,
  LogRepair,
  SegmentInfo,
  SegmentLogOptions,
  SegmentSummarizer,
  SegmentSummary,
} from "./log.ts";
export { recoverSegment } from "./recover.ts";
export * from "./scanner.ts";
