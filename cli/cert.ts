/**
 * `moat cert`: make a key and a self-signed certificate for TLS.
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import {
  colonFingerprint,
  createSelfSignedCert,
  DEFAULT_CERT_DAYS,
} from "../lib/cert.ts";
import { ExitCode, MoatError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  describeFsError,
  formatHelp,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine, printNote } from "./output.ts";

const CERT_OPTIONS = {
  out: {
    type: "string",
    placeholder: "DIR",
    default: ".",
    description: "Write DIR/moat-cert.pem and DIR/moat-key.pem",
  },
  name: {
    type: "string",
    placeholder: "NAME",
    multiple: true,
    description: "A DNS name or IP address the certificate is for",
  },
  days: {
    type: "integer",
    placeholder: "N",
    min: 1,
    default: DEFAULT_CERT_DAYS,
    description: "Valid for N days",
  },
  force: { type: "boolean", description: "Replace existing files" },
} as const satisfies OptionTable;

/** `moat cert`'s options, usage and help. */
export const CERT: CommandSpec<typeof CERT_OPTIONS> = {
  name: "cert",
  summary: "Make a key and a self-signed certificate for TLS",
  usage: ["cert [--out DIR] [--name HOST|IP]... [options]"],
  description:
    `Make an ECDSA P-256 key and a self-signed certificate (CA:FALSE, one
subjectAltName per --name; default localhost, 127.0.0.1 and ::1) for
moat serve --tls-cert/--tls-key, or for a client's --cert/--key. Prints its
SHA-256 fingerprint, which clients give to --pin (or servers to --allow-cert).`,
  options: CERT_OPTIONS,
  exits: [
    ...COMMON_EXITS,
    {
      code: ExitCode.Exists,
      description: "a file to write exists (use --force)",
    },
  ],
};

/**
 * Runs `moat cert`: writes the key (mode 0600) and certificate, prints the
 * fingerprint on stdout.
 *
 * @param args The arguments after "cert".
 * @param context The environment.
 * @throws {MoatError} ERR_EXISTS if a file exists without --force.
 */
export async function certCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(CERT, args, context);
  if (parsed.help) return printLine(formatHelp(CERT));
  const { values } = parsed;
  const dir = values.out;
  const certFile = path.join(dir, "moat-cert.pem");
  const keyFile = path.join(dir, "moat-key.pem");
  if (!values.force) {
    for (const f of [certFile, keyFile]) {
      if (fs.existsSync(f)) {
        throw new MoatError(
          "ERR_EXISTS",
          `"${escapeText(f)}" exists: use --force to replace it`,
          ExitCode.Exists,
        );
      }
    }
  }
  const made = await createSelfSignedCert({
    names: values.name,
    days: values.days,
  });
  let writing = dir;
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    writing = keyFile;
    fs.writeFileSync(keyFile, made.key, { mode: 0o600 });
    fs.chmodSync(keyFile, 0o600);
    writing = certFile;
    fs.writeFileSync(certFile, made.cert, { mode: 0o644 });
  } catch (err) {
    throw new MoatError(
      "ERR_IO",
      `Cannot write "${escapeText(writing)}": ${describeFsError(err)}`,
      ExitCode.Failure,
      { cause: err },
    );
  }
  printLine(made.fingerprint);
  printNote(
    `wrote ${escapeText(certFile)} and ${escapeText(keyFile)} (mode 0600)`,
  );
  printNote(`SHA-256 fingerprint ${colonFingerprint(made.fingerprint)}`);
}
