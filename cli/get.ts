/**
 * `moat get`: fetch one file, verified and saved atomically, with a progress
 * bar on a terminal.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { get } from "../lib/client.ts";
import { DEFAULT_DIGEST, DIGESTS } from "../lib/digest.ts";
import { Code, ExitCode, MoatError, UsageError } from "../lib/errors.ts";
import { partPathOf } from "../lib/file_sender.ts";
import { DEFAULT_MAX_FRAME_SIZE } from "../lib/framer.ts";
import { MIN_MAX_FRAME_SIZE } from "../lib/protocol.ts";
import { escapeText } from "../lib/text.ts";
import {
  CLIENT_EXITS,
  clientOptions,
  SERVER_OPTION,
  TIMEOUT_OPTION,
} from "./_client.ts";
import {
  type CommandSpec,
  describeFsError,
  formatHelp,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine, printNote } from "./output.ts";
import { progressBar } from "./progress.ts";
import { CLIENT_SECURITY_ENV, CLIENT_SECURITY_OPTIONS } from "./secure_cli.ts";

const GET_OPTIONS = {
  server: SERVER_OPTION,
  out: {
    type: "string",
    short: "o",
    placeholder: "FILE",
    description: "Save as FILE",
    defaultText: "the path's last segment",
  },
  force: { type: "boolean", description: "Replace an existing file" },
  resume: {
    type: "boolean",
    description: "Continue an interrupted get from <out>.moat-part",
  },
  digest: {
    type: "string",
    placeholder: "NAME",
    choices: DIGESTS,
    default: DEFAULT_DIGEST,
    description:
      "Whole-file check: crc32 (catches truncation and corruption at no cost) or sha256 (a digest to compare with a published one; costs ~0.65 s of CPU per GiB on each side)",
  },
  "max-frame": {
    type: "integer",
    placeholder: "BYTES",
    min: MIN_MAX_FRAME_SIZE,
    default: DEFAULT_MAX_FRAME_SIZE,
    description: "Largest frame accepted",
  },
  timeout: {
    ...TIMEOUT_OPTION,
    description:
      `${TIMEOUT_OPTION.description}, or between two chunks of the file`,
  },
  ...CLIENT_SECURITY_OPTIONS,
} as const satisfies OptionTable;

/** `moat get`'s options, usage and help. */
export const GET: CommandSpec<typeof GET_OPTIONS> = {
  name: "get",
  summary: "Fetch a file from a server: verified, saved atomically",
  usage: ["get FILE:<path> [options]"],
  description:
    `Fetch <path> (relative to the server's root) into the current folder. The file
is written to <out>.moat-part, its size and digest checked against the
server's, and only then renamed to <out>.`,
  positionals: true,
  options: GET_OPTIONS,
  env: CLIENT_SECURITY_ENV,
  exits: [
    ...CLIENT_EXITS,
    {
      code: ExitCode.NotFound,
      description: "the server refused the path (missing, outside the root)",
    },
    {
      code: ExitCode.Integrity,
      description: "the file arrived damaged (size or digest mismatch)",
    },
    {
      code: ExitCode.Exists,
      description: "the output file exists (use --force or --resume)",
    },
  ].sort((a, b) => a.code - b.code),
};

/**
 * Runs `moat get`.
 *
 * @param args The arguments after "get".
 * @param context The environment.
 * @throws {MoatError} With the exit status of what went wrong.
 */
export async function getCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(GET, args, context);
  if (parsed.help) return printLine(formatHelp(GET));
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UsageError(
      "get takes exactly one FILE:<path> (see moat get --help)",
    );
  }
  const request = positionals[0]!.startsWith("FILE:")
    ? positionals[0]!.slice(5)
    : positionals[0]!;
  if (request === "") throw new UsageError("Empty path in FILE:<path>");
  const out = values.out ?? path.posix.basename(request);
  if (out === "" || out === "." || out === "..") {
    throw new UsageError(
      `Cannot derive a file name from "${escapeText(request)}": use -o FILE`,
    );
  }
  checkOutputFolder(out);
  const client = {
    ...clientOptions(values, context.env),
    maxFrameSize: values["max-frame"],
  };
  const tty = process.stderr.isTTY === true;
  const bar = tty ? progressBar(escapeText(path.basename(out))) : undefined;
  const started = performance.now();
  let result;
  try {
    result = await get(client, {
      path: request,
      out,
      force: values.force,
      resume: values.resume,
      digest: values.digest,
      ...(bar && { onStart: bar.start, onProgress: bar.update }),
    });
  } catch (err) {
    bar?.end();
    // The download keeps its part only when there is something to resume.
    if (
      err instanceof MoatError &&
      err.code === Code.ERR_CONNECTION_CLOSED &&
      fs.existsSync(partPathOf(out))
    ) {
      throw new MoatError(
        err.code,
        `${err.message}; re-run with --resume to continue`,
        err.exitCode,
      );
    }
    throw err;
  }
  if (bar) {
    bar.update(result.bytes, result.bytes, true);
    bar.end();
  }
  const secs = (performance.now() - started) / 1000;
  const rate = secs > 0 ? result.bytes / secs / 2 ** 30 : 0;
  printNote(
    `saved ${escapeText(out)} (${result.size} bytes${
      result.offset ? `, resumed at ${result.offset}` : ""
    }, ` +
      `${result.digestName} ${result.digest}) in ${secs.toFixed(2)} s, ${
        rate.toFixed(2)
      } GiB/s`,
  );
}

/**
 * Fails before connecting when the folder of `out` is not there, naming the
 * path and the reason rather than an errno code.
 */
function checkOutputFolder(out: string): void {
  let problem: string | undefined;
  try {
    if (!fs.statSync(path.dirname(out)).isDirectory()) {
      problem = "a part of the path is not a directory";
    }
  } catch (err) {
    problem = describeFsError(err);
  }
  if (problem !== undefined) {
    throw new MoatError(
      Code.ERR_IO,
      `Cannot write "${escapeText(out)}": ${problem}`,
      ExitCode.Failure,
    );
  }
}
