/**
 * A chunk of vault records into a source's Merkle tree, off the server's
 * thread: the worker (entry `cli/_tree_worker.ts`) keeps a copy of each tree's
 * frontier and, per chunk, hashes the records' leaves and merges the nodes
 * they complete, returning the hashes the tree file stores (in its order)
 * and the new frontier; the server's `SourceTree` (`_tree.ts`) only copies
 * them in (`MerkleLog.appendRun`). `TreeHasher` is the server's side of the
 * worker, one per process, shared by every open vault.
 *
 * The leaves and nodes are the ones `RecordLeaves` and
 * `MerkleLog.appendLeaves` give on the server's thread (tested against each
 * other); the worker runs where a native SHA-256 loads (with the batch
 * loops on Bun, one call a hash on Deno) and the command named its entry
 * ({@linkcode setTreeWorker}), so the SHA-256 work of a record (about
 * 0.35 µs on Bun: five 64-byte blocks and their calls) goes to another
 * core.
 *
 * @module
 */

import { nativeSha256, nativeSha256Batch, portableBatch } from "../sha256.ts";
import { leafHashInto, popcount, RecordLeaves } from "./_tree_file.ts";
import { HASH_BYTES } from "../merkle.ts";

/** A chunk for the worker. */
export interface ChunkJob {
  /** Matches the answer to the job. */
  id: number;
  /** Which tree (one per source and open vault). */
  stream: number;
  /** The tree's size before the chunk. */
  size: number;
  /** The records, encoded back to back (copied to the worker). */
  bytes: Uint8Array;
  /** Starts the tree's copy anew: its source hash and frontier at `size`. */
  reset?: { source: Uint8Array; front: Uint8Array };
}

/** A chunk's hashes, as the tree stores them. */
export interface ChunkHashes {
  /** Records (leaves) in the chunk. */
  n: number;
  /** The hashes to store, 32 bytes each: each leaf, then what it completes. */
  run: Uint8Array;
  /** How many. */
  count: number;
  /** The frontier after the chunk. */
  front: Uint8Array;
  /** Where each record starts in the chunk (for the record locator). */
  starts: Int32Array;
}

/** The worker's answer. */
export type ChunkDone = ({ id: number } & ChunkHashes) | {
  id: number;
  error: string;
};

/** hashChunk's buffers, reused (one worker, one chunk at a time). */
const scratch = { leaves: new Uint8Array(0), out: new Uint8Array(0) };

/** Largest frontier: a tree's size is below 2^53. */
const FRONT_SLOTS = 56;

/** One tree as the worker holds it. */
interface Stream {
  source: Uint8Array;
  front: Uint8Array;
  size: number;
}

/**
 * Hashes a chunk onto a tree's frontier (the worker's side): through the
 * batch loops where installed, else one `sha256Parts` call a hash.
 *
 * @param stream The tree's frontier and size, advanced.
 * @param bytes The records.
 * @returns The answer, without its id.
 */
export function hashChunk(
  stream: Stream,
  bytes: Uint8Array,
): ChunkHashes {
  const batch = nativeSha256Batch();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let n = 0;
  for (let at = 0; at < bytes.length; n++) {
    const length = view.getUint32(at + 4, true);
    if (length < 36 || at + length > bytes.length) {
      throw new RangeError(`bad record of ${length} bytes at ${at}`);
    }
    at += length;
  }
  // Deno has no batch: there each leaf is one native call, and the nodes
  // merge through the portable loop.
  const leaves = RecordLeaves.open(stream.source, n);
  const starts = new Int32Array(n);
  // The worker's buffers are reused from chunk to chunk: only what is
  // answered (moved to the server) is new.
  if (scratch.leaves.length < HASH_BYTES * n) {
    scratch.leaves = new Uint8Array(HASH_BYTES * n);
  }
  if (scratch.out.length < HASH_BYTES * (2 * n + 54)) {
    scratch.out = new Uint8Array(HASH_BYTES * (2 * n + 54));
  }
  const hashes = scratch.leaves;
  let i = 0;
  for (let at = 0; at < bytes.length; i++) {
    const length = view.getUint32(at + 4, true);
    starts[i] = at;
    if (leaves === undefined) {
      leafHashInto(bytes, at, length, stream.source, hashes, HASH_BYTES * i);
    } else leaves.add(bytes, at, at + length);
    at += length;
  }
  leaves?.hash(bytes, hashes);
  const out = scratch.out;
  const count = (batch ?? portableBatch).merkleAppend(
    stream.front,
    popcount(stream.size),
    stream.size,
    hashes,
    0,
    n,
    out,
  );
  stream.size += n;
  const depth = popcount(stream.size);
  return {
    n,
    run: out.slice(0, HASH_BYTES * count),
    count,
    front: stream.front.slice(0, HASH_BYTES * depth),
    starts,
  };
}

/**
 * The worker's message loop: a tree's copy per stream, a chunk per job.
 *
 * @param post Sends an answer.
 * @returns Handles one message.
 */
export function chunkWorker(
  post: (done: ChunkDone, transfer: ArrayBuffer[]) => void,
): (message: ChunkJob | { drop: number }) => void {
  const streams = new Map<number, Stream>();
  return (message) => {
    if ("drop" in message) {
      streams.delete(message.drop);
      return;
    }
    const job = message;
    try {
      if (job.reset !== undefined) {
        const front = new Uint8Array(HASH_BYTES * FRONT_SLOTS);
        front.set(job.reset.front);
        streams.set(job.stream, {
          source: job.reset.source,
          front,
          size: job.size,
        });
      }
      const stream = streams.get(job.stream);
      if (stream === undefined || stream.size !== job.size) {
        throw new Error(
          `tree ${job.stream} is at ${
            stream?.size ?? "none"
          }, the chunk at ${job.size}`,
        );
      }
      const done = hashChunk(stream, job.bytes);
      post({ id: job.id, ...done }, [
        done.run.buffer as ArrayBuffer,
        done.starts.buffer as ArrayBuffer,
      ]);
    } catch (error) {
      // The tree's copy may be half-advanced: the server starts it anew.
      streams.delete(job.stream);
      post({ id: job.id, error: (error as Error).message ?? `${error}` }, []);
    }
  };
}

/** Where the worker's entry is (the command sets it); none: no worker. */
let workerUrl: URL | undefined;

/**
 * Names the worker's entry module (`cli/_tree_worker.ts`, which installs
 * the runtime's SHA-256 as a command does); without one, or where no native
 * SHA-256 is installed, trees hash on the vault's thread.
 *
 * @param url The entry, or undefined for none.
 */
export function setTreeWorker(url: URL | undefined): void {
  workerUrl = url;
}

/**
 * Lets a worker keep the process alive or not (Bun's `ref`/`unref`; a
 * no-op where a runtime has neither).
 */
function refWorker(worker: Worker, keep: boolean): void {
  const w = worker as Worker & { ref?(): void; unref?(): void };
  if (keep) w.ref?.();
  else w.unref?.();
}

/**
 * Jobs at the worker at once; the rest wait, unposted, on the server's
 * side (their chunks' bytes are held there anyway). Each posted job costs a
 * copy of its chunk and the worker's buffers for it: with every job posted
 * at once, 60 shippers of empty records queued them at the worker faster
 * than it hashed, and the server's RSS reached 460 MiB (soak); four keep it
 * busy.
 */
const MAX_POSTED = 4;

/** What the server's side keeps per job. */
interface Waiting {
  resolve(done: ChunkDone): void;
}

/**
 * The server's side of the worker: one per process, started by the first
 * vault that asks ({@linkcode TreeHasher.acquire}) where a native SHA-256
 * is installed, ended with the last ({@linkcode TreeHasher.release}). It
 * keeps the process alive only while a job is out. If the worker fails,
 * every job out and every later one is answered with an error, and the
 * trees hash on their own thread.
 */
export class TreeHasher {
  static #shared: TreeHasher | undefined;
  /** Chunks answered with hashes in this process (for tests and benches). */
  static hashed = 0;
  #worker: Worker | undefined;
  #users = 0;
  #nextId = 1;
  #nextStream = 1;
  /** Every job not answered yet, posted or queued. */
  #waiting = new Map<number, Waiting>();
  /** Jobs not posted yet, oldest first. */
  #queue: { id: number; job: Omit<ChunkJob, "id"> }[] = [];
  /** Jobs at the worker. */
  #posted = 0;
  #broken: string | undefined;
  /** Told once if the worker fails (each vault using it). */
  #onFailure = new Set<(message: string) => void>();

  /** The worker, started at the first chunk. */
  #start(): Worker {
    if (this.#worker !== undefined) return this.#worker;
    const worker = new Worker(workerUrl!, { type: "module" });
    this.#worker = worker;
    refWorker(worker, false);
    worker.onmessage = (event: MessageEvent<ChunkDone>) => {
      const done = event.data;
      const waiting = this.#waiting.get(done.id);
      if (waiting === undefined) return;
      this.#waiting.delete(done.id);
      this.#posted--;
      if (this.#waiting.size === 0) refWorker(worker, false);
      if (!("error" in done)) TreeHasher.hashed++;
      waiting.resolve(done);
      this.#pump();
    };
    const fail = (why: string) => this.#fail(why);
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault?.();
      fail(`the tree worker failed: ${event.message}`);
    };
    worker.onmessageerror = () => fail("a tree worker message was lost");
    // Bun says when a worker's thread ended (Deno never starts this one).
    worker.addEventListener("close", () => fail("the tree worker exited"));
    return worker;
  }

  /** The worker stopped working: said once, every job out answered. */
  #fail(why: string): void {
    if (this.#broken === undefined) {
      this.#broken = why;
      for (const tell of this.#onFailure) tell(why);
    }
    this.#answerAll(why);
    if (this.#worker !== undefined) refWorker(this.#worker, false);
  }

  /** Answers every job out or queued with an error. */
  #answerAll(why: string): void {
    const waiting = [...this.#waiting.entries()];
    this.#waiting.clear();
    this.#queue.length = 0;
    this.#posted = 0;
    for (const [id, w] of waiting) w.resolve({ id, error: why });
  }

  /**
   * Posts queued jobs while fewer than {@linkcode MAX_POSTED} are at the
   * worker.
   */
  #pump(): void {
    while (this.#posted < MAX_POSTED && this.#queue.length > 0) {
      const { id, job } = this.#queue.shift()!;
      let worker: Worker;
      try {
        worker = this.#start();
      } catch (error) {
        // No worker here (it cannot start): the trees hash on their own.
        this.#fail(
          `the tree worker cannot start: ${(error as Error).message ?? error}`,
        );
        return;
      }
      refWorker(worker, true);
      // A copy, moved (not cloned): a structured clone of the bytes cost
      // the server 0.26 µs a record, a copy and a transfer far less.
      const bytes = job.bytes.slice();
      worker.postMessage({ ...job, bytes, id }, [bytes.buffer]);
      this.#posted++;
    }
  }

  /**
   * The process's worker, started if need be; undefined where no native
   * SHA-256 is installed (the trees hash on the server's thread).
   *
   * @param onFailure Told if the worker fails later (not when released).
   * @returns The hasher; give it back with {@linkcode TreeHasher.release}.
   */
  static acquire(
    onFailure?: (message: string) => void,
  ): TreeHasher | undefined {
    // Without a native SHA-256 the worker would spend more than it saves.
    if (
      workerUrl === undefined ||
      (nativeSha256Batch() === undefined && nativeSha256() === undefined)
    ) {
      return undefined;
    }
    let hasher = TreeHasher.#shared;
    if (hasher === undefined || hasher.#broken !== undefined) {
      hasher = new TreeHasher();
      TreeHasher.#shared = hasher;
    }
    hasher.#users++;
    if (onFailure !== undefined) hasher.#onFailure.add(onFailure);
    return hasher;
  }

  /**
   * Gives the hasher back; the last one out ends the worker.
   *
   * @param onFailure What {@linkcode TreeHasher.acquire} was given.
   */
  release(onFailure?: (message: string) => void): void {
    if (onFailure !== undefined) this.#onFailure.delete(onFailure);
    if (--this.#users > 0) return;
    this.#onFailure.clear();
    if (TreeHasher.#shared === this) TreeHasher.#shared = undefined;
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#broken ??= "the tree worker was stopped";
    this.#answerAll(this.#broken);
  }

  /** Why the worker stopped working, if it did. */
  get broken(): string | undefined {
    return this.#broken;
  }

  /** A stream number for a new tree. */
  newStream(): number {
    return this.#nextStream++;
  }

  /**
   * Sends a chunk (its bytes are copied).
   *
   * @param job The chunk, without its id.
   * @returns The answer (an error answer where the worker failed).
   */
  hash(job: Omit<ChunkJob, "id">): Promise<ChunkDone> {
    const id = this.#nextId++;
    if (this.#broken !== undefined) {
      return Promise.resolve({ id, error: this.#broken });
    }
    return new Promise((resolve) => {
      this.#waiting.set(id, { resolve });
      this.#queue.push({ id, job });
      this.#pump();
    });
  }

  /**
   * Ends the worker as if it had died (for tests): jobs out are answered
   * with an error, and the trees hash on their own thread from then on.
   * (Bun also says so with the worker's "close" event; Deno has none.)
   */
  static _kill(): void {
    const shared = TreeHasher.#shared;
    if (shared === undefined) return;
    shared.#worker?.terminate();
    shared.#fail("the tree worker exited");
  }

  /** Forgets a tree's copy (its vault closed). */
  drop(stream: number): void {
    if (this.#broken === undefined) this.#worker?.postMessage({ drop: stream });
  }
}
