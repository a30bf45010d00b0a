// deno-lint-ignore-file no-console
/**
 * Every byte moat prints goes through here: lines on stdout, `moat: …`
 * messages on stderr, and bulk output written whole. A reader that closes
 * stdout early (`moat vault cat DIR | head`) ends the output quietly instead
 * of with a stack trace.
 *
 * @module
 */

import * as fs from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * Thrown when stdout's reader has gone (EPIPE): nothing more can be shown,
 * so `main.ts` exits quietly with {@linkcode STDOUT_CLOSED_EXIT}.
 */
export class StdoutClosedError extends Error {
  readonly code = "ERR_STDOUT_CLOSED";
  constructor(options?: ErrorOptions) {
    super("Standard output was closed by its reader", options);
    this.name = "StdoutClosedError";
  }
}

/** The status of a program killed by SIGPIPE (128 + 13), as `cat` would end. */
export const STDOUT_CLOSED_EXIT = 141;

/**
 * Prints one line on stdout. The runtimes' console drops a line whose
 * reader has gone rather than throwing.
 *
 * @param line Text without its newline; outside text must be escaped first.
 */
export function printLine(line: string): void {
  console.log(line);
}

/**
 * Prints `moat: message` on stderr.
 *
 * @param message One line; outside text must be escaped first.
 */
export function printNote(message: string): void {
  console.error(`moat: ${message}`);
}

/**
 * Prints a line on stderr as it is, for messages that are not `moat: …` lines.
 *
 * @param line One or more lines, without the final newline.
 */
export function printToStderr(line: string): void {
  console.error(line);
}

/**
 * Writes all of `bytes` to stdout, synchronously so nothing is pending at
 * exit, coping with short writes and a non-blocking pipe (EAGAIN).
 *
 * @param bytes What to write.
 * @throws {StdoutClosedError} If stdout's reader has gone (EPIPE).
 */
export async function writeStdout(bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) {
    try {
      off += fs.writeSync(1, bytes, off, bytes.length - off);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EPIPE") throw new StdoutClosedError({ cause: err });
      if (code !== "EAGAIN") throw err;
      await sleep(5);
    }
  }
}

/**
 * Writes text to stdout whole (see {@linkcode writeStdout}).
 *
 * @param text What to write, newlines included.
 * @throws {StdoutClosedError} If stdout's reader has gone (EPIPE).
 */
export async function writeStdoutText(text: string): Promise<void> {
  await writeStdout(new TextEncoder().encode(text));
}
