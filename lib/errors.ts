/**
 * Every error moat throws on purpose. Each carries a stable `code` so that
 * `main.ts` can map it to an exit status and the protocol can put it on the wire.
 *
 * @module
 */

/** Exit statuses used by `main.ts`. */
export const ExitCode = {
  Ok: 0,
  Failure: 1,
  Usage: 2,
  AccessDenied: 3,
  NotFound: 4,
  Integrity: 5,
  Connection: 6,
  Exists: 7,
} as const;
export type ExitCode = typeof ExitCode[keyof typeof ExitCode];

/** Base class: a moat error with a stable code and an exit status. */
export class MoatError extends Error {
  readonly code: string;
  readonly exitCode: ExitCode;
  constructor(
    code: string,
    message: string,
    exitCode: ExitCode = ExitCode.Failure,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "MoatError";
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** A frame's declared length exceeds the configured limit. */
export class FrameTooLargeError extends RangeError {
  readonly code = "ERR_FRAME_TOO_LARGE";
  readonly exitCode: ExitCode = ExitCode.Failure;
  constructor(
    readonly size: number,
    readonly limit: number,
    options?: ErrorOptions,
  ) {
    super(
      `Cannot decode frame: length ${size} exceeds maxFrameSize ${limit}`,
      options,
    );
    this.name = "FrameTooLargeError";
  }
}

/** The peer broke the protocol: bad magic, unknown frame type, bad payload, truncated frame. */
export class ProtocolError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_PROTOCOL", message, ExitCode.Failure, options);
    this.name = "ProtocolError";
  }
}

/** The connection ended (EOF or reset) where more was expected, or a write found it gone. */
export class ConnectionClosedError extends MoatError {
  constructor(message = "Connection closed by peer", options?: ErrorOptions) {
    super("ERR_CONNECTION_CLOSED", message, ExitCode.Connection, options);
    this.name = "ConnectionClosedError";
  }
}

/** Could not reach the server at all. */
export class ConnectError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_CONNECT", message, ExitCode.Connection, options);
    this.name = "ConnectError";
  }
}

/** The listening address is taken. */
export class AddressInUseError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_ADDR_IN_USE", message, ExitCode.Failure, options);
    this.name = "AddressInUseError";
  }
}

/** The server refused this peer (allowlist, deny rule, or connection limit). */
export class AccessDeniedError extends MoatError {
  constructor(message = "Access refused by server", options?: ErrorOptions) {
    super("ERR_ACCESS_DENIED", message, ExitCode.AccessDenied, options);
    this.name = "AccessDeniedError";
  }
}

/** A requested path is outside the root, malformed, missing, or not a regular file. */
export class PathError extends MoatError {
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(code, message, ExitCode.NotFound, options);
    this.name = "PathError";
  }
}

/** A transfer's size or SHA-256 did not match. */
export class IntegrityError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_INTEGRITY", message, ExitCode.Integrity, options);
    this.name = "IntegrityError";
  }
}

/** A bad command-line value or configuration rule; stops start-up. */
export class UsageError extends MoatError {
  constructor(message: string, options?: ErrorOptions) {
    super("ERR_USAGE", message, ExitCode.Usage, options);
    this.name = "UsageError";
  }
}

/**
 * A vault source the vault will not create: its name contains `/` (the
 * separator of the `peer/name` label) or a control character. The message
 * names no server path, so it may go to the peer.
 */
export class SourceNameError extends TypeError {
  readonly code = "ERR_SOURCE_NAME";
  readonly exitCode: ExitCode = ExitCode.Usage;
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SourceNameError";
  }
}

/**
 * A peer asked the vault for a new source beyond `maxSourcesPerPeer`. The
 * message names no server path, so it may go to the peer.
 */
export class TooManySourcesError extends MoatError {
  constructor(
    readonly peer: string,
    readonly limit: number,
    options?: ErrorOptions,
  ) {
    super(
      "ERR_TOO_MANY_SOURCES",
      `Cannot create another source for peer "${peer}": it has ${limit} (maxSourcesPerPeer)`,
      ExitCode.Failure,
      options,
    );
    this.name = "TooManySourcesError";
  }
}

/**
 * One vault append (one ship batch) carried more records than the vault
 * takes at once. The message names no server path, so it may go to the peer.
 */
export class TooManyRecordsError extends RangeError {
  readonly code = "ERR_TOO_MANY_RECORDS";
  readonly exitCode: ExitCode = ExitCode.Failure;
  constructor(
    readonly count: number,
    readonly limit: number,
    options?: ErrorOptions,
  ) {
    super(
      `Cannot append ${count} records at once: a batch holds at most ${limit} (maxRecordsPerAppend)`,
      options,
    );
    this.name = "TooManyRecordsError";
  }
}

/** Error classes for `instanceof` checks. */
export const errors = {
  MoatError,
  FrameTooLargeError,
  ProtocolError,
  ConnectionClosedError,
  ConnectError,
  AddressInUseError,
  AccessDeniedError,
  PathError,
  IntegrityError,
  UsageError,
  SourceNameError,
  TooManySourcesError,
  TooManyRecordsError,
} as const;
