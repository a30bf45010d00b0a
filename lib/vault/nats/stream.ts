/**
 * The JetStream stream behind a vault: created (when moat's credentials
 * may, and it is missing) or checked (deny-delete and deny-purge on, no
 * roll-ups, file storage, our subjects: else the door refuses to start), its
 * meta message (first writer wins), and the reads the door's catch-up makes.
 *
 * @module
 */

import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type {
  JetStreamClient,
  JetStreamManager,
  StreamConfig,
  StreamInfo,
} from "@nats-io/jetstream";
import { MoatError } from "../../errors.ts";
import type { NatsConnection } from "./connect.ts";
import { decodeMeta, encodeMeta, subjectsOf } from "./codec.ts";
import type { StreamMeta, Subjects } from "./codec.ts";

/** JetStream's API error code for a failed expected-last-subject-sequence check. */
export const WRONG_LAST_SEQUENCE = 10071;
/** JetStream's API error code for a missing stream. */
const STREAM_NOT_FOUND = 10059;
/** The duplicate window: a door's retry within it gets JetStream's duplicate ack. */
export const DUPLICATE_WINDOW_MS = 120_000;

/** Options for {@linkcode openStream}. */
export interface StreamOptions {
  /** The stream's name. @default {"MOAT"} */
  stream?: string;
  /** Replicas of a stream this call creates (1 to 5). @default {3} */
  replicas?: number;
  /** Milliseconds a JetStream request may take. @default {10000} */
  timeoutMs?: number;
}

/** An open stream. */
export interface OpenStream {
  readonly name: string;
  readonly subjects: Subjects;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** The stream's config as found (or made). */
  readonly info: StreamInfo;
  /** Whether this call created the stream. */
  readonly created: boolean;
}

/** A message read back. */
export interface StoredRecordMsg {
  /** Stream sequence number. */
  seq: number;
  /** Body. */
  data: Uint8Array;
}

/**
 * The config moat creates a stream with.
 *
 * @param name The stream name.
 * @param replicas Replicas.
 * @returns The config.
 */
export function streamConfig(
  name: string,
  replicas: number,
): Partial<StreamConfig> & { name: string } {
  return {
    name,
    subjects: [subjectsOf(name).all],
    storage: "file" as StreamConfig["storage"],
    num_replicas: replicas,
    deny_delete: true,
    deny_purge: true,
    allow_rollup_hdrs: false,
    duplicate_window: DUPLICATE_WINDOW_MS * 1_000_000,
    max_msg_size: -1,
  };
}

/**
 * Opens the stream: checks an existing one, or creates a missing one.
 *
 * @param nc The connection.
 * @param options Name, replicas.
 * @returns The stream.
 * @throws {MoatError} `ERR_USAGE` for a stream whose config lets messages
 * be deleted, purged or rolled up, or that does not hold moat's subjects;
 * `ERR_CONNECT` when the stream is missing and cannot be created, or
 * JetStream does not answer.
 */
export async function openStream(
  nc: NatsConnection,
  options: StreamOptions = {},
): Promise<OpenStream> {
  const name = options.stream ?? "MOAT";
  const replicas = options.replicas ?? 3;
  if (!Number.isSafeInteger(replicas) || replicas < 1 || replicas > 5) {
    throw new RangeError(`Invalid replicas: ${replicas} is not 1 to 5`);
  }
  const subjects = subjectsOf(name);
  const timeout = options.timeoutMs ?? 10_000;
  const jsm = await jetstreamManager(nc, {
    checkAPI: false,
    timeout: Math.min(timeout, 5_000),
  });
  const js = jetstream(nc, { timeout });
  let info: StreamInfo;
  let created = false;
  try {
    info = await jsm.streams.info(name);
  } catch (error) {
    if ((error as { code?: number }).code !== STREAM_NOT_FOUND) {
      throw _unavailable(`Cannot read stream "${name}"`, error);
    }
    try {
      info = await jsm.streams.add(streamConfig(name, replicas));
      created = true;
    } catch (error) {
      throw _unavailable(
        `Stream "${name}" does not exist, and creating it failed (have an administrator create it, see docs/DEPLOY.md)`,
        error,
      );
    }
  }
  checkStreamConfig(info.config, subjects);
  return { name, subjects, js, jsm, info, created };
}

/**
 * Checks that a stream protects what it holds: deny-delete and deny-purge
 * on, roll-up headers refused, file storage, and moat's subjects.
 *
 * @param config The stream's config.
 * @param subjects moat's subjects in it.
 * @throws {MoatError} `ERR_USAGE` naming the first setting that fails.
 */
export function checkStreamConfig(
  config: Partial<StreamConfig>,
  subjects: Subjects,
): void {
  const bad = (what: string) =>
    new MoatError(
      "ERR_USAGE",
      `Refusing stream "${config.name}": ${what} (records there could be removed or it is not moat's)`,
    );
  if (config.deny_delete !== true) throw bad("deny_delete is off");
  if (config.deny_purge !== true) throw bad("deny_purge is off");
  if (config.allow_rollup_hdrs === true) throw bad("allow_rollup_hdrs is on");
  if (String(config.storage) !== "file") throw bad("storage is not file");
  if (!config.subjects?.includes(subjects.all)) {
    throw bad(`its subjects do not include ${subjects.all}`);
  }
  const limits: [string, number | undefined][] = [
    ["max_age", config.max_age],
    ["max_msgs", config.max_msgs],
    ["max_bytes", config.max_bytes],
    ["max_msgs_per_subject", config.max_msgs_per_subject],
  ];
  for (const [field, value] of limits) {
    if (value !== undefined && value > 0) {
      throw bad(`${field} is ${value}: old records would be dropped`);
    }
  }
}

/**
 * Reads the meta message, or publishes `mine` as it when there is none
 * (expected last subject sequence 0: of doors racing, the first wins and
 * the others read its meta).
 *
 * @param stream The stream.
 * @param mine The meta to publish if there is none; undefined: only read.
 * @returns The stream's meta; undefined if there is none and `mine` is.
 * @throws {MoatError} `ERR_CORRUPT` for a malformed meta; `ERR_CONNECT`
 * when JetStream does not answer.
 */
export async function streamMeta(
  stream: OpenStream,
  mine?: StreamMeta,
): Promise<StreamMeta | undefined> {
  const read = async () => {
    const found = await lastMessage(stream, stream.subjects.meta);
    if (found === undefined) return undefined;
    try {
      return decodeMeta(found.data);
    } catch (error) {
      throw new MoatError(
        "ERR_CORRUPT",
        `Stream "${stream.name}": ${(error as Error).message}`,
      );
    }
  };
  const found = await read();
  if (found !== undefined || mine === undefined) return found;
  try {
    await stream.js.publish(stream.subjects.meta, encodeMeta(mine), {
      expect: { lastSubjectSequence: 0 },
    });
    return mine;
  } catch (error) {
    if ((error as { code?: number }).code !== WRONG_LAST_SEQUENCE) {
      throw _unavailable(`Cannot write stream "${stream.name}"'s meta`, error);
    }
    return await read();
  }
}

/**
 * The last message of a subject.
 *
 * @param stream The stream.
 * @param subject The subject.
 * @returns The message, or undefined if the subject has none.
 */
export async function lastMessage(
  stream: OpenStream,
  subject: string,
): Promise<StoredRecordMsg | undefined> {
  const m = await _read(
    stream,
    () => stream.jsm.streams.getMessage(stream.name, { last_by_subj: subject }),
  );
  return m === null ? undefined : { seq: m.seq, data: m.data };
}

/**
 * The first message of a subject at or after a stream sequence number
 * (JetStream's `next_by_subj`, server 2.9 and later).
 *
 * @param stream The stream.
 * @param subject The subject.
 * @param seq The stream sequence to start at.
 * @returns The message, or undefined if there is none.
 */
export async function nextMessage(
  stream: OpenStream,
  subject: string,
  seq: number,
): Promise<StoredRecordMsg | undefined> {
  // The manager's types name only seq and last_by_subj; the server's
  // MSG.GET request takes next_by_subj with seq too.
  const query = { seq, next_by_subj: subject } as unknown as { seq: number };
  const m = await _read(
    stream,
    () => stream.jsm.streams.getMessage(stream.name, query),
  );
  return m === null ? undefined : { seq: m.seq, data: m.data };
}

/** Attempts a read makes before it fails. */
const READ_ATTEMPTS = 3;

/**
 * Runs a read request, again after a timeout or "no responders": a request
 * sent while the client reconnects can be lost with the old connection, and
 * a stream whose leader is being elected answers nobody for a moment. Reads
 * change nothing, so trying again is safe.
 */
async function _read<T>(stream: OpenStream, request: () => Promise<T>) {
  for (let attempt = 1;; attempt++) {
    try {
      return await request();
    } catch (error) {
      const name = (error as Error).name;
      const retry = name === "TimeoutError" || name === "NoRespondersError";
      if (!retry || attempt >= READ_ATTEMPTS) {
        throw _unavailable(`Cannot read stream "${stream.name}"`, error);
      }
    }
  }
}

/**
 * Wraps a NATS failure as a door-side error: the peer sees ERR_INTERNAL
 * (and retries), the audit log the reason.
 *
 * @param what What failed.
 * @param error The client's error.
 * @returns The error.
 */
export function _unavailable(what: string, error: unknown): MoatError {
  return new MoatError(
    "ERR_CONNECT",
    `${what}: ${error instanceof Error ? error.message : String(error)}`,
    undefined,
    { cause: error },
  );
}
