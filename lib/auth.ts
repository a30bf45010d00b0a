/**
 * Token authentication by challenge and response. The server sends a fresh
 * 32-byte nonce; the client answers with
 * `HMAC-SHA256(token, "moat-auth-1" 0 nonce 0 mode 0 name 0 binding)`, where
 * `binding` is the server certificate's fingerprint on TLS ("" on plain TCP).
 * The token never crosses the wire; a recorded answer is useless against
 * another nonce; and the binding makes an answer relayed through a
 * TLS-terminating interceptor fail. Proofs are compared in constant time.
 *
 * Token files hold one token per line, `NAME SECRET` or just `SECRET`
 * (name "token"); `#` starts a comment. A secret carries at least 128 bits:
 * 32 hex digits, or 22 characters of any richer alphabet (base64, say). Like
 * ssh with its key files, the server refuses a token file that group or
 * others may read. Failed proofs are throttled per address
 * ({@linkcode AuthThrottle}).
 *
 * @module
 */

import * as fs from "node:fs";
import process from "node:process";
import { Buffer } from "node:buffer";
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { decodeJson, encodeJson } from "./protocol.ts";
import { AccessDeniedError, ProtocolError, UsageError } from "./errors.ts";
import { escapeText } from "./text.ts";

/** A named shared secret. */
export interface Token {
  name: string;
  secret: string;
}

/** Body of the Challenge frame (server → client). */
export interface Challenge {
  /** 64 hex digits: 32 random bytes, fresh for every connection. */
  nonce: string;
  /** Methods the server accepts; currently always `["token"]`. */
  methods: string[];
}

/** Body of the Auth frame (client → server). */
export interface AuthAnswer {
  name: string;
  /** 64 hex digits: the HMAC. */
  proof: string;
}

/** What the proof covers besides the nonce. */
export interface ProofContext {
  /** Hex nonce from the challenge. */
  nonce: string;
  /** The Hello's mode. */
  mode: string;
  /** Server certificate fingerprint on TLS, "" on plain TCP. */
  binding: string;
}

/** Characters a secret needs for 128 bits: hex digits carry 4 bits each. */
const MIN_HEX_SECRET = 32;
/** Characters of a richer alphabet (base64: 6 bits each) for 128 bits. */
const MIN_SECRET = 22;
const NAME = /^[A-Za-z0-9._@-]{1,64}$/;

/**
 * Parses a token file.
 *
 * @param text The file's text.
 * @param source Where it came from, for errors.
 * @returns The tokens, in order.
 * @throws {UsageError} On a malformed line, a short secret, or a repeated name.
 */
export function parseTokens(text: string, source: string): Token[] {
  const tokens: Token[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/\s+/);
    if (fields.length > 2) {
      throw new UsageError(
        `Invalid token in ${source} line ${i + 1}: expected "NAME SECRET"`,
      );
    }
    const [name, secret] = fields.length === 2
      ? [fields[0]!, fields[1]!]
      : ["token", fields[0]!];
    if (!NAME.test(name)) {
      throw new UsageError(
        `Invalid token name "${name}" in ${source} line ${i + 1}`,
      );
    }
    const min = /^[0-9a-fA-F]+$/.test(secret) ? MIN_HEX_SECRET : MIN_SECRET;
    if (secret.length < min) {
      throw new UsageError(
        `Token "${name}" in ${source} line ${
          i + 1
        } is too short: a secret needs 128 bits, at least ${MIN_HEX_SECRET} hex digits or ${MIN_SECRET} base64 characters (make one with: openssl rand -hex 16)`,
      );
    }
    if (tokens.some((t) => t.name === name)) {
      throw new UsageError(
        `Token name "${name}" repeated in ${source} line ${i + 1}`,
      );
    }
    tokens.push({ name, secret });
  }
  return tokens;
}

/**
 * Loads tokens from `--token-file`, else from the MOAT_TOKEN environment
 * variable (never from argv, where other users could read it).
 *
 * @param file The `--token-file` value, if given.
 * @param env The environment.
 * @returns The tokens, or undefined when neither is set.
 * @throws {UsageError} When the file cannot be read or holds no token.
 */
export function loadTokens(
  file: string | undefined,
  env: Record<string, string | undefined>,
): Token[] | undefined {
  let text: string;
  let source: string;
  if (file !== undefined) {
    try {
      // One descriptor for the check and the read: the mode checked is the
      // mode of the file read.
      const fd = fs.openSync(file, "r");
      try {
        const mode = fs.fstatSync(fd).mode;
        if (process.platform !== "win32" && (mode & 0o077) !== 0) {
          throw new UsageError(
            `Refusing --token-file "${file}": group or others may access it (mode ${
              (mode & 0o777).toString(8).padStart(3, "0")
            }; run chmod 600 on it)`,
          );
        }
        text = fs.readFileSync(fd, "utf8");
      } finally {
        fs.closeSync(fd);
      }
    } catch (err) {
      if (err instanceof UsageError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      throw new UsageError(
        `Cannot read --token-file "${file}": ${
          code === "ENOENT"
            ? "no such file"
            : code === "EACCES"
            ? "permission denied"
            : code ?? err
        }`,
      );
    }
    source = `--token-file "${file}"`;
  } else if (env.MOAT_TOKEN) {
    text = env.MOAT_TOKEN;
    source = "MOAT_TOKEN";
  } else {
    return undefined;
  }
  const tokens = parseTokens(text, source);
  if (tokens.length === 0) throw new UsageError(`No token in ${source}`);
  return tokens;
}

/**
 * Makes a challenge with a fresh nonce.
 *
 * @returns The challenge.
 */
export function newChallenge(): Challenge {
  return { nonce: randomBytes(32).toString("hex"), methods: ["token"] };
}

/**
 * Computes the proof for a token.
 *
 * @param token The token.
 * @param context Nonce, mode and channel binding.
 * @returns 64 hex digits.
 */
export function tokenProof(token: Token, context: ProofContext): string {
  return createHmac("sha256", token.secret)
    .update(
      `moat-auth-1\0${context.nonce}\0${context.mode}\0${token.name}\0${context.binding}`,
    )
    .digest("hex");
}

/**
 * Checks an answer against the server's tokens, in constant time per token
 * (an unknown name still costs one HMAC, against a throwaway secret).
 *
 * @param tokens The server's tokens.
 * @param answer The client's answer.
 * @param context The server's nonce, the Hello's mode, the server's fingerprint.
 * @returns The matching token, or undefined.
 */
export function verifyAnswer(
  tokens: readonly Token[],
  answer: AuthAnswer,
  context: ProofContext,
): Token | undefined {
  const token = tokens.find((t) => t.name === answer.name);
  const expected = Buffer.from(
    tokenProof(
      token ?? { name: answer.name, secret: randomBytes(32).toString("hex") },
      context,
    ),
    "hex",
  );
  const given = /^[0-9a-f]{64}$/.test(answer.proof)
    ? Buffer.from(answer.proof, "hex")
    : Buffer.alloc(32);
  const same = timingSafeEqual(expected, given);
  return same && token !== undefined ? token : undefined;
}

/**
 * Encodes a Challenge payload.
 *
 * @param challenge The challenge.
 * @returns JSON bytes.
 */
export function encodeChallenge(challenge: Challenge): Uint8Array {
  return encodeJson(challenge);
}

/**
 * Parses a Challenge payload.
 *
 * @param payload Frame payload.
 * @returns The challenge.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeChallenge(payload: Uint8Array): Challenge {
  const o = decodeJson(payload, "challenge");
  if (typeof o.nonce !== "string" || !/^[0-9a-f]{64}$/.test(o.nonce)) {
    throw new ProtocolError(
      'Cannot decode challenge: field "nonce" must be 64 hex digits',
    );
  }
  const methods = Array.isArray(o.methods)
    ? o.methods.filter((m): m is string => typeof m === "string")
    : [];
  return { nonce: o.nonce, methods };
}

/**
 * Encodes an Auth payload.
 *
 * @param answer The answer.
 * @returns JSON bytes.
 */
export function encodeAuth(answer: AuthAnswer): Uint8Array {
  return encodeJson(answer);
}

/**
 * Parses an Auth payload.
 *
 * @param payload Frame payload.
 * @returns The answer.
 * @throws {ProtocolError} On a malformed payload.
 */
export function decodeAuth(payload: Uint8Array): AuthAnswer {
  const o = decodeJson(payload, "auth");
  if (typeof o.name !== "string" || typeof o.proof !== "string") {
    throw new ProtocolError(
      'Cannot decode auth: fields "name" and "proof" must be strings',
    );
  }
  return { name: o.name, proof: o.proof };
}

/**
 * The client's side: answers a challenge with its token.
 *
 * @param payload The Challenge frame's payload.
 * @param options The client's token (if any), mode and channel binding.
 * @returns The Auth frame's payload.
 * @throws {AccessDeniedError} When the server wants a token and the client has none.
 */
export function answerChallenge(
  payload: Uint8Array,
  options: { token: Token | undefined; mode: string; binding: string },
): Uint8Array {
  const challenge = decodeChallenge(payload);
  if (!challenge.methods.includes("token")) {
    throw new ProtocolError(
      `Server asked for an unknown authentication method: ${
        escapeText(challenge.methods.join(", "), { maxLength: 256 })
      }`,
    );
  }
  if (options.token === undefined) {
    throw new AccessDeniedError(
      "Server requires a token: pass --token-file FILE or set MOAT_TOKEN",
    );
  }
  const proof = tokenProof(options.token, {
    nonce: challenge.nonce,
    mode: options.mode,
    binding: options.binding,
  });
  return encodeAuth({ name: options.token.name, proof });
}

/** Options for {@linkcode AuthThrottle}. */
export interface AuthThrottleOptions {
  /** Wait after the first failure, in milliseconds; it doubles with each. @default {250} */
  baseMs?: number;
  /** Longest wait, in milliseconds. @default {60_000} */
  maxMs?: number;
  /** Addresses remembered; the least recently failed is forgotten first. @default {4096} */
  maxKeys?: number;
  /** The clock, in milliseconds. @default {Date.now} */
  now?: () => number;
}

interface Failures {
  count: number;
  /** No attempt is taken from this address before this time. */
  until: number;
}

/**
 * Throttles token guessing per address: after `n` failed proofs an address
 * must wait `baseMs · 2^(n-1)` (at most `maxMs`) before its next attempt is
 * even challenged. A success forgets the address; so does a quiet spell of
 * `maxMs` after its wait. Memory is bounded by `maxKeys`.
 *
 * @example Back off after failures
 * ```ts
 * import { AuthThrottle } from "./auth.ts";
 * import assert from "node:assert/strict";
 * let t = 0;
 * const throttle = new AuthThrottle({ baseMs: 100, now: () => t });
 * assert.equal(throttle.wait("10.0.0.9"), 0);
 * throttle.failed("10.0.0.9");
 * throttle.failed("10.0.0.9");
 * assert.equal(throttle.wait("10.0.0.9"), 200);
 * t += 200;
 * assert.equal(throttle.wait("10.0.0.9"), 0);
 * ```
 */
export class AuthThrottle {
  #base: number;
  #max: number;
  #maxKeys: number;
  #now: () => number;
  #failures = new Map<string, Failures>();

  /**
   * @param options Delays, memory bound and clock.
   */
  constructor(options: AuthThrottleOptions = {}) {
    this.#base = options.baseMs ?? 250;
    this.#max = options.maxMs ?? 60_000;
    this.#maxKeys = options.maxKeys ?? 4096;
    this.#now = options.now ?? Date.now;
  }

  /**
   * How long an address must still wait before it may try again.
   *
   * @param address The peer's address.
   * @returns Milliseconds; 0 when it may try now.
   */
  wait(address: string): number {
    const f = this.#failures.get(address);
    if (f === undefined) return 0;
    const now = this.#now();
    if (now >= f.until + this.#max) {
      this.#failures.delete(address);
      return 0;
    }
    return Math.max(0, f.until - now);
  }

  /**
   * Records a failed proof.
   *
   * @param address The peer's address.
   * @returns The failures counted for it, this one included.
   */
  failed(address: string): number {
    const now = this.#now();
    const old = this.#failures.get(address);
    const count = old === undefined || now >= old.until + this.#max
      ? 1
      : old.count + 1;
    this.#failures.delete(address);
    if (this.#failures.size >= this.#maxKeys) {
      this.#failures.delete(this.#failures.keys().next().value!);
    }
    const delay = Math.min(
      this.#max,
      this.#base * 2 ** Math.min(count - 1, 30),
    );
    this.#failures.set(address, { count, until: now + delay });
    return count;
  }

  /**
   * Forgets an address after a successful proof.
   *
   * @param address The peer's address.
   */
  succeeded(address: string): void {
    this.#failures.delete(address);
  }
}
