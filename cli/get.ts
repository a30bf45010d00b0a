/**
 * `moat get`: fetch one file, verified and saved atomically, with a progress
 * bar on a terminal.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { type ClientOptions, get, getStream } from "../lib/client.ts";
import { DEFAULT_DIGEST, type DigestName, DIGESTS } from "../lib/digest.ts";
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
import { printLine, printNote, writeStdout } from "./output.ts";
import { formatRate, type ProgressBar, progressBar } from "./progress.ts";
import { CLIENT_SECURITY_ENV, CLIENT_SECURITY_OPTIONS } from "./secure_cli.ts";

const GET_OPTIONS = {
  server: SERVER_OPTION,
  out: {
    type: "string",
    short: "o",
    placeholder: "FILE",
    description: "Save as FILE; - writes the file to stdout (see below)",
    defaultText: "the path's last segment",
  },
  force: {
    type: "boolean",
    description:
      "Replace an existing file, and discard the part an interrupted get left",
  },
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
server's, and only then renamed to <out>. Ctrl-C, a cut connection or a
timeout leave the part for --resume; a get without --resume or --force
refuses to discard a part that holds bytes.`,
  notes:
    `With -o -, the file goes to stdout as it arrives and is checked at the end:
stdout cannot be renamed, so a damaged or cut transfer has already been
written when it is found. moat then says so on stderr and exits non-zero;
treat the output as good only if moat exits 0. A terminal is refused as
stdout; pipe or redirect it.`,
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
      description:
        "the output file exists (use --force), or its part holds an interrupted get (use --resume or --force)",
    },
    {
      code: ExitCode.Interrupted,
      description: "interrupted by Ctrl-C; the part stays for --resume",
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
  const client = {
    ...clientOptions(values, context.env),
    maxFrameSize: values["max-frame"],
  };
  // Ctrl-C stops the get cleanly (the part stays for --resume); a second
  // one does not wait for that.
  const stop = new AbortController();
  const interrupt = () => {
    if (stop.signal.aborted) process.exit(ExitCode.Interrupted);
    stop.abort();
  };
  process.on("SIGINT", interrupt);
  try {
    if (values.out === "-") {
      if (values.resume) {
        throw new UsageError(
          "--resume needs a file: a get to stdout (-o -) starts from the beginning",
        );
      }
      return await getToStdout(client, request, {
        digest: values.digest,
        signal: stop.signal,
      });
    }
    return await getToFile(client, request, {
      out: values.out ?? path.posix.basename(request),
      force: values.force,
      resume: values.resume,
      digest: values.digest,
      signal: stop.signal,
    });
  } finally {
    process.off("SIGINT", interrupt);
  }
}

/** The bar on stderr when it is a terminal, labelled with the file's name. */
function barFor(name: string): ProgressBar | undefined {
  return process.stderr.isTTY === true
    ? progressBar(escapeText(path.basename(name)))
    : undefined;
}

/** "in 0.12 s, 98.3 MiB/s" for `bytes` moved since `started`. */
function timing(bytes: number, started: number): string {
  const secs = (performance.now() - started) / 1000;
  return `in ${secs.toFixed(2)} s, ${formatRate(secs > 0 ? bytes / secs : 0)}`;
}

/** `moat get` into a file: verified in its part, then renamed. */
async function getToFile(
  client: ClientOptions,
  request: string,
  options: {
    out: string;
    force: boolean;
    resume: boolean;
    digest: DigestName;
    signal: AbortSignal;
  },
): Promise<void> {
  const { out } = options;
  if (out === "" || out === "." || out === "..") {
    throw new UsageError(
      `Cannot derive a file name from "${escapeText(request)}": use -o FILE`,
    );
  }
  checkOutputFolder(out);
  const bar = barFor(out);
  const started = performance.now();
  let result;
  try {
    result = await get(client, {
      path: request,
      out,
      force: options.force,
      resume: options.resume,
      digest: options.digest,
      signal: options.signal,
      ...(bar && { onStart: bar.start, onProgress: bar.update }),
    });
  } catch (err) {
    bar?.end();
    const kept = sizeOf(partPathOf(out)) > 0;
    if (options.signal.aborted) {
      throw new MoatError(
        Code.ERR_CONNECTION_CLOSED,
        kept
          ? "interrupted; run the same command with --resume to continue"
          : "interrupted",
        ExitCode.Interrupted,
        { cause: err },
      );
    }
    // The download keeps its part only when there is something to resume.
    if (
      err instanceof MoatError &&
      (err.code === Code.ERR_CONNECTION_CLOSED ||
        err.code === Code.ERR_TIMEOUT) &&
      kept
    ) {
      throw new MoatError(
        err.code,
        `${err.message}; run the same command with --resume to continue`,
        err.exitCode,
        { cause: err },
      );
    }
    throw err;
  }
  if (bar) {
    bar.update(result.bytes, result.bytes, true);
    bar.end();
  }
  printNote(
    `saved ${escapeText(out)} (${result.size} bytes${
      result.offset ? `, resumed at ${result.offset}` : ""
    }, ${result.digestName} ${result.digest}) ${timing(result.bytes, started)}`,
  );
}

/**
 * `moat get -o -`: the file streamed to stdout, checked at the end. What
 * went out before a failure cannot be taken back, so the failure says so.
 */
async function getToStdout(
  client: ClientOptions,
  request: string,
  options: { digest: DigestName; signal: AbortSignal },
): Promise<void> {
  if (process.stdout.isTTY === true) {
    throw new UsageError(
      `Refusing to write "${
        escapeText(request)
      }" to a terminal: pipe or redirect stdout (moat get -o - FILE:<path> | less)`,
    );
  }
  const bar = barFor(request);
  const started = performance.now();
  let written = 0;
  let result;
  try {
    result = await getStream(client, {
      path: request,
      digest: options.digest,
      signal: options.signal,
      write: async (bytes) => {
        await writeStdout(bytes);
        written += bytes.length;
      },
      ...(bar && { onStart: bar.start, onProgress: bar.update }),
    });
  } catch (err) {
    bar?.end();
    const what = written > 0
      ? `; the ${written} bytes written to stdout are not the file`
      : "";
    if (options.signal.aborted) {
      throw new MoatError(
        Code.ERR_CONNECTION_CLOSED,
        `interrupted${what}`,
        ExitCode.Interrupted,
        { cause: err },
      );
    }
    if (err instanceof MoatError && what !== "") {
      throw new MoatError(err.code, `${err.message}${what}`, err.exitCode, {
        cause: err,
      });
    }
    throw err;
  }
  if (bar) {
    bar.update(result.bytes, result.bytes, true);
    bar.end();
  }
  printNote(
    `wrote ${
      escapeText(request)
    } to stdout (${result.size} bytes, ${result.digestName} ${result.digest}, verified) ${
      timing(result.bytes, started)
    }`,
  );
}

/** A file's size, or 0 when there is none. */
function sizeOf(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
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
