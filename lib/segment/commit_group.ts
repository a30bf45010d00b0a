/**
 * Group commit for a set of segment logs, and the bound on the files they
 * keep open.
 *
 * @module
 */

/** Counters shared by the logs of one {@linkcode CommitGroup}. */
export interface CommitStats {
  /** Commit rounds run (each writes and fsyncs every dirty log). */
  commits: number;
  /** File fsyncs issued. */
  syncs: number;
  /** Idle segment files closed to stay within `maxOpenFiles`. */
  evictions: number;
}

/**
 * What a {@linkcode CommitGroup} needs of a log (a `SegmentLog`).
 *
 * @internal
 */
export interface GroupMember {
  /** Writes and fsyncs the queued records; never rejects. */
  commit(): Promise<void>;
  /** True while a commit of this log runs. */
  readonly committing: boolean;
  /** Closes the log's open segment file, if it is not committing. */
  closeFile(): Promise<void>;
}

/** Options for {@linkcode CommitGroup}. */
export interface CommitGroupOptions {
  /**
   * Most segment files the group's logs keep open at once, and the most
   * logs committed in parallel. A log that needs its file while the bound
   * is reached closes the least recently used idle one; a log whose file
   * was closed reopens it at its next commit.
   * @default {128}
   */
  maxOpenFiles?: number;
}

/** Default bound on open segment files per group. */
export const DEFAULT_MAX_OPEN_FILES = 128;

/**
 * Runs group commits for a set of logs: whenever a log has queued records,
 * one loop writes and fsyncs every dirty log (at most `maxOpenFiles` in
 * parallel), resolves their waiters, and repeats while more records
 * arrived meanwhile. It also keeps the open segment files of its logs
 * within `maxOpenFiles`, closing the least recently used idle ones, so a
 * vault with thousands of sources holds a bounded number of descriptors.
 */
export class CommitGroup {
  #dirty = new Set<GroupMember>();
  /** Logs holding an open file, least recently used first. */
  #open = new Set<GroupMember>();
  #maxOpen: number;
  #running: Promise<void> | undefined;
  /** Counters. */
  readonly stats: CommitStats = { commits: 0, syncs: 0, evictions: 0 };

  /**
   * @param options The bound on open files.
   * @throws {RangeError} If `maxOpenFiles` is not a positive integer.
   */
  constructor(options: CommitGroupOptions = {}) {
    const max = options.maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(
        `Invalid maxOpenFiles: ${max} is not a positive integer`,
      );
    }
    this.#maxOpen = max;
  }

  /** Segment files the group's logs hold open now. */
  get openFiles(): number {
    return this.#open.size;
  }

  /**
   * Queues a commit of `log`.
   *
   * @param log The log with queued records.
   */
  mark(log: GroupMember): void {
    this.#dirty.add(log);
    this.#running ??= this.#loop();
  }

  /**
   * Resolves once no commit is queued or running.
   *
   * @returns When idle.
   */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  /**
   * Makes room for `log` to open its segment file: closes the least
   * recently used files of idle logs until fewer than `maxOpenFiles` are
   * open. Called by a log (while it commits) before it opens a file.
   *
   * @param log The log about to open a file.
   * @returns When there is room.
   */
  async admit(log: GroupMember): Promise<void> {
    this.#open.delete(log);
    while (this.#open.size >= this.#maxOpen) {
      let victim: GroupMember | undefined;
      for (const member of this.#open) {
        if (!member.committing) {
          victim = member;
          break;
        }
      }
      // Cannot happen while commits run at most maxOpen at a time; never
      // close a file a commit is using.
      if (victim === undefined) return;
      this.#open.delete(victim);
      this.stats.evictions++;
      await victim.closeFile();
    }
  }

  /**
   * Records that `log` holds an open file and used it just now.
   *
   * @param log The log.
   */
  touch(log: GroupMember): void {
    this.#open.delete(log);
    this.#open.add(log);
  }

  /**
   * Records that `log` closed its file.
   *
   * @param log The log.
   */
  release(log: GroupMember): void {
    this.#open.delete(log);
  }

  async #loop(): Promise<void> {
    // Let appends issued in the same tick join the first round.
    await Promise.resolve();
    while (this.#dirty.size > 0) {
      const logs = [...this.#dirty];
      this.#dirty.clear();
      this.stats.commits++;
      let next = 0;
      const worker = async () => {
        while (next < logs.length) await logs[next++]!.commit();
      };
      const workers = Math.min(this.#maxOpen, logs.length);
      await Promise.all(Array.from({ length: workers }, worker));
    }
    this.#running = undefined;
  }
}
