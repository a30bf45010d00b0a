/**
 * The defaults of every limit the server enforces, in one place: the server
 * uses them when an option is absent, and the command line shows them in
 * `--help`. Nothing here is runtime-specific.
 *
 * @module
 */

/** The port moat listens on and clients connect to by default. */
export const DEFAULT_PORT = 4320;
/** The port `moat witness` listens on, and `moat serve --witness` connects to, by default. */
export const DEFAULT_WITNESS_PORT = 4321;
/** Most connections at once on the main port; more get a `BUSY` refusal. */
export const DEFAULT_MAX_CONNS = 512;
/**
 * Most connections at once from one peer address, on each port: one
 * allowed host cannot take every slot from the others.
 */
export const DEFAULT_MAX_CONNS_PER_PEER = 64;
/** Longest chat line, in bytes. */
export const DEFAULT_MAX_LINE = 8192;
/** A connection idle this long is closed, in milliseconds. */
export const DEFAULT_IDLE_TIMEOUT_MS = 300_000;
/** A client must finish its handshake this soon, in milliseconds. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * Most records one ship batch (one vault append) may carry: each costs a
 * chain hash, so this bounds the work one frame can make the server do at
 * once. The shipper never puts more in one frame.
 */
export const DEFAULT_MAX_BATCH_RECORDS = 4096;
/** A source that was shipping and is quiet this long is reported, in milliseconds. */
export const DEFAULT_SILENT_AFTER_MS = 300_000;
/**
 * Most bytes all file transfers together hold in send buffers. Each transfer
 * takes its chunk buffer from it: smaller chunks when it is tight.
 */
export const DEFAULT_SEND_BUFFER_BYTES = 64 * 1024 * 1024;
/**
 * Chat lines one peer address may send per second (with a burst of two
 * seconds' worth); past it the server stops reading that peer until the
 * rate allows, and the room as a whole (and the operator's stdout) takes
 * 20 times this.
 */
export const DEFAULT_CHAT_RATE = 50;
/**
 * Audit lines one peer address may cause per second and event kind (with a
 * burst of ten seconds' worth; all peers together 20 times this); what the
 * limit holds back is counted in `suppressed` lines.
 */
export const DEFAULT_AUDIT_RATE = 10;
