/**
 * `moat witness`: a small server, apart from the vault host, that keeps the
 * latest checkpoint of each vault source it cosigned and cosigns a new one
 * only if it extends it; or, with `--init`, makes its key and prints it.
 *
 * @module
 */

import process from "node:process";
import { getNet } from "../lib/net/mod.ts";
import { AuditLog, auditRateLimit } from "../lib/audit.ts";
import { formatAddr, Server } from "../lib/server/mod.ts";
import { parseServerAddr } from "../lib/client.ts";
import {
  AddressInUseError,
  ExitCode,
  MoatError,
  UsageError,
} from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { ED25519, parseVerifier } from "../lib/checkpoint.ts";
import { VERSION } from "../lib/version.ts";
import {
  DEFAULT_AUDIT_RATE,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_WITNESS_PORT,
} from "../lib/limits.ts";
import {
  DEFAULT_MAX_ORIGINS_PER_PEER,
  type OpenedWitness,
  openWitness,
} from "../lib/witness/witness.ts";
import {
  type CommandSpec,
  COMMON_EXITS,
  formatHelp,
  type OptionTable,
  parseCommand,
  type RunContext,
} from "./options.ts";
import { printLine, printNote } from "./output.ts";
import {
  SERVE_SECURITY_ENV,
  SERVE_SECURITY_OPTIONS,
  serverSecurity,
} from "./secure_cli.ts";
import { CONNECTION_OPTIONS, readAllowlist, SERVE } from "./serve.ts";
import { AuditFile } from "./serve_log.ts";
import { handleServeSignals } from "./serve_signals.ts";

const WITNESS_OPTIONS = {
  state: {
    type: "string",
    placeholder: "DIR",
    description:
      "The witness's folder: its key (witness.key, 0600), the checkpoint it holds per origin, its lock (required)",
  },
  init: {
    type: "boolean",
    description:
      "Make the witness's cosignature key in --state (if it has none), print its verifier key, and exit",
  },
  name: {
    type: "string",
    placeholder: "NAME",
    defaultText: "HOSTNAME-witness",
    description:
      "The name of a new key (no spaces or +): vaults see it in cosignatures",
  },
  listen: {
    type: "string",
    placeholder: "HOST[:PORT]",
    defaultText:
      `127.0.0.1 and ::1 without --allow; :: with --allow; port ${DEFAULT_WITNESS_PORT}`,
    description: "Listen on this address only; port 0 picks a free one",
  },
  allow: SERVE.options.allow,
  "allow-file": SERVE.options["allow-file"],
  deny: SERVE.options.deny,
  "vault-key": {
    type: "string",
    placeholder: "KEY",
    multiple: true,
    description:
      "Cosign only checkpoints signed by this vault checkpoint key; without it, the first key an origin shows is pinned for it",
  },
  "max-origins-per-peer": {
    type: "integer",
    placeholder: "N",
    min: 1,
    default: DEFAULT_MAX_ORIGINS_PER_PEER,
    description:
      "Most origins (vault sources) one peer address may make the witness hold; more are refused and logged",
  },
  ...CONNECTION_OPTIONS,
  "handshake-timeout": {
    type: "integer",
    placeholder: "SECS",
    min: 1,
    default: DEFAULT_HANDSHAKE_TIMEOUT_MS / 1000,
    description: "A vault must finish its handshake within SECS",
  },
  "audit-rate": {
    type: "integer",
    placeholder: "N",
    min: 0,
    default: DEFAULT_AUDIT_RATE,
    description:
      "Audit lines per second per peer address and event kind (bursts of 10 s worth); 0 is unlimited",
  },
  log: {
    type: "string",
    placeholder: "FILE",
    defaultText: "stderr",
    description:
      'Append the JSON audit log to FILE ("-": stderr), reopened on SIGHUP; see docs/AUDIT.md',
  },
  ...SERVE_SECURITY_OPTIONS,
} as const satisfies OptionTable;

/** `moat witness`'s options, usage and help. */
export const WITNESS: CommandSpec<typeof WITNESS_OPTIONS> = {
  name: "witness",
  summary:
    "Cosign vault checkpoints that extend the last one seen, from another host",
  usage: [
    "witness --init --state DIR [--name NAME]",
    "witness --state DIR [--listen HOST[:PORT]] [--allow RULE]... [options]",
  ],
  description:
    `Keep, for each vault source (origin), the latest checkpoint cosigned, and
cosign a new one only if it extends it (a consistency proof from the size
held). A smaller tree, another root at the same size, a failed proof or
another key is refused, and logged as witness_refused naming both
checkpoints: a vault rolled back or forked after this witness saw it can no
longer get a cosignature. Run it on a host the vault host cannot reach into;
vaults send their checkpoints with moat serve --witness HOST:PORT
--witness-key KEY, where KEY is what --init prints.`,
  options: WITNESS_OPTIONS,
  env: SERVE_SECURITY_ENV,
  exits: [
    {
      code: 0,
      description: "stopped by SIGINT or SIGTERM (or --init printed the key)",
    },
    ...COMMON_EXITS.filter((e) => e.code !== 0),
    {
      code: ExitCode.Integrity,
      description: "the key or a state file is damaged",
    },
  ],
  notes: `SIGHUP reopens --log and reads --allow-file, --tls-cert, --tls-key,
--client-ca and --token-file again.`,
};

/**
 * Runs `moat witness` until SIGINT or SIGTERM (which exit 0), or makes its
 * key with `--init`.
 *
 * @param args The arguments after "witness".
 * @param context The environment.
 * @throws {MoatError} A usage error, a taken port, a locked or damaged state.
 */
export async function witnessCommand(
  args: string[],
  context: RunContext,
): Promise<void> {
  const parsed = parseCommand(WITNESS, args, context);
  if (parsed.help) return printLine(formatHelp(WITNESS));
  const { values, given } = parsed;
  if (values.state === undefined) {
    throw new UsageError("moat witness needs --state DIR");
  }
  if (values.init) {
    const stray = given.find((g) =>
      g.name !== "state" && g.name !== "init" &&
      g.name !== "name"
    );
    if (stray !== undefined) {
      throw new UsageError(
        `--init takes only --state and --name, not --${stray.name}`,
      );
    }
  }
  // The signed-note rules lib/checkpoint.ts applies, said as a usage error.
  if (
    values.name !== undefined &&
    !/^[\x21-\x2a\x2c-\x7e]{1,128}$/.test(values.name)
  ) {
    throw new UsageError(
      `Invalid --name "${
        escapeText(values.name)
      }": 1 to 128 printable characters, no spaces or +`,
    );
  }
  for (const key of values["vault-key"]) {
    try {
      if (parseVerifier(key).type !== ED25519) throw new Error("not a log key");
    } catch (err) {
      throw new UsageError(
        `Invalid --vault-key "${escapeText(key)}": ${(err as Error).message}`,
      );
    }
  }
  const listen = values.listen === undefined
    ? undefined
    : listenAddr(values.listen);
  const allowlist = readAllowlist(values);
  const security = serverSecurity(values, context.env);
  const opened = await openState(values.state, {
    ...(values.name !== undefined && { name: values.name }),
    vaultKeys: values["vault-key"],
    maxOriginsPerPeer: values["max-origins-per-peer"],
  });
  const { witness } = opened;
  if (values.init) {
    await witness.close();
    printLine(witness.verifier);
    printNote(
      opened.created
        ? `made the witness key in "${
          escapeText(witness.dir)
        }" (witness.key, mode 0600); give the line above to moat serve --witness-key`
        : `"${
          escapeText(witness.dir)
        }" has a key already: the line above is its verifier key`,
    );
    return;
  }
  if (opened.created) {
    printNote(`made a witness key; its verifier key is ${witness.verifier}`);
  }

  const log = values.log === undefined || values.log === "-"
    ? undefined
    : new AuditFile(values.log, `--log "${escapeText(values.log)}"`);
  const audit = new AuditLog(
    log ? (line) => log.write(line) : (line) => {
      process.stderr.write(line + "\n");
    },
    { limit: auditRateLimit(values["audit-rate"]) },
  );
  const net = getNet();
  const port = listen?.port ?? DEFAULT_WITNESS_PORT;
  const make = (hosts: string[]) =>
    new Server({
      net,
      hosts,
      port,
      allowlist,
      audit,
      version: VERSION,
      maxConns: values["max-conns"],
      maxConnsPerPeer: values["max-conns-per-peer"],
      idleTimeoutMs: values["idle-timeout"] * 1000,
      handshakeTimeoutMs: values["handshake-timeout"] * 1000,
      namePrefix: "w-",
      witness,
      ...security,
    });
  const hosts = listen !== undefined
    ? [listen.hostname]
    : allowlist.loopbackOnly
    ? ["127.0.0.1", "::1"]
    : ["::"];
  let server = make(hosts);
  handleServeSignals({
    audit,
    log,
    reload: () =>
      server.reload({
        allowlist: readAllowlist(values),
        ...serverSecurity(values, context.env),
      }),
    stop: async () => {
      try {
        await server.close({ beforeShutdown: () => witness.close() });
      } finally {
        log?.close();
        process.exit(0);
      }
    },
    note: printNote,
  });
  let addrs;
  try {
    addrs = await server.listen();
  } catch (err) {
    // A host without IPv6 still serves IPv4; a taken port is fatal.
    if (listen !== undefined || err instanceof AddressInUseError) {
      await witness.close();
      throw err;
    }
    server = make([allowlist.loopbackOnly ? "127.0.0.1" : "0.0.0.0"]);
    addrs = await server.listen().catch(async (err) => {
      await witness.close();
      throw err;
    });
  }
  printNote(
    `witness listening on ${
      addrs.map(formatAddr).join(", ")
    }; key ${witness.verifier}`,
  );
  await new Promise(() => {});
}

/** `--listen HOST[:PORT]`; port 0 picks a free one. */
function listenAddr(text: string): { hostname: string; port: number } {
  const any = /^(.+):0$/.exec(text);
  const addr = parseServerAddr(any ? any[1]! : text, DEFAULT_WITNESS_PORT);
  return any ? { hostname: addr.hostname, port: 0 } : addr;
}

/** Opens the state folder, turning what is wrong with it into one line. */
async function openState(
  dir: string,
  options: Parameters<typeof openWitness>[1],
): Promise<OpenedWitness> {
  try {
    return await openWitness(dir, options);
  } catch (err) {
    if (err instanceof MoatError) throw err;
    throw new MoatError(
      "ERR_IO",
      `Cannot open --state "${escapeText(dir)}": ${(err as Error).message}`,
      ExitCode.Failure,
      { cause: err },
    );
  }
}
