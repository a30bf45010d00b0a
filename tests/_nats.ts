/**
 * A real NATS JetStream cluster for tests: one or three `nats-server`
 * processes on free loopback ports (client, cluster route, monitoring), each
 * with its own store directory under the test's temp dir, and the account
 * layout of docs/DEPLOY.md (an admin user that creates the stream; a moat
 * user that may publish the vault's subjects and read, but not delete, purge,
 * update or create streams). Both are nkey users; each gets a credentials
 * file (`cluster.users.moat.creds`) for `--nats-creds`.
 *
 * Readiness waits on the server's own signals: the "Server is ready" log
 * line, then `/healthz` on the monitoring port (which answers 200 only once
 * the node has a JetStream meta leader and its streams are current). Nodes
 * are stopped by PID; `using`/`await using` stops every node even when the
 * test throws.
 *
 * Also a minimal NATS protocol client ({@link rawConnect}) so tests can make
 * JetStream API requests as a given user and see the server's own answer,
 * including `-ERR 'Permissions Violation …'`, without going through moat's
 * code or the @nats-io client.
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import * as fs from "node:fs";
import { Buffer } from "node:buffer";
import * as net from "node:net";
import * as path from "node:path";
import process from "node:process";

/** Where Debian's package installs nats-server; NATS_SERVER overrides. */
export const NATS_SERVER: string = process.env.NATS_SERVER ??
  "/usr/sbin/nats-server";

/**
 * Why the NATS tests cannot run here, or `false` if they can (for
 * `test(name, { skip: noNats }, …)`).
 */
export const noNats: string | false = whyNoNats();

function whyNoNats(): string | false {
  const r = spawnSync(NATS_SERVER, ["--version"], {
    encoding: "utf8",
    timeout: 10_000,
  });
  if (r.error !== undefined || r.status !== 0) {
    return `skipped: ${NATS_SERVER} not found (apt-get install nats-server, or set NATS_SERVER)`;
  }
  return false;
}

/**
 * A NATS user authenticated by an nkey (an Ed25519 key pair): the server
 * config names its public key; the client signs the server's nonce with the
 * seed, which a credentials file carries (`--nats-creds`).
 */
export interface NkeyUser {
  /** Public nkey, `U…` (in the server config). */
  readonly nkey: string;
  /** Seed, `SU…` (secret). */
  readonly seed: string;
  /** The private key, for the raw client's signature. */
  readonly privateKey: KeyObject;
  /** A credentials file holding the seed (see {@linkcode credsFileText}). */
  readonly creds: string;
}

/** The users of the test cluster. */
export interface NatsUsers {
  /** Creates the stream; not given to moat. */
  admin: NkeyUser;
  /** What `moat serve` / `moat vault` use. */
  moat: NkeyUser;
  /** The system account's user (password). */
  sys: { user: string; password: string };
}

function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) {
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
  }
  return crc;
}

function base32(bytes: Uint8Array): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  let out = "";
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

function withCrc(bytes: number[]): Uint8Array {
  const raw = Uint8Array.from(bytes);
  const crc = crc16(raw);
  return Uint8Array.from([...raw, crc & 0xff, crc >> 8]);
}

/** NATS nkey prefixes: seed "S", user "U". */
const PREFIX_SEED = 18 << 3;
const PREFIX_USER = 20 << 3;

/**
 * The text of a NATS credentials file for an nkey user of a config-file
 * account. A server without an operator does not read the JWT part (the
 * NATS clients' credentials parser requires one), only the signature made
 * with the seed.
 */
export function credsFileText(seed: string): string {
  return `-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.unused
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
${seed}
------END USER NKEY SEED------
`;
}

/**
 * Makes a user nkey pair and writes its credentials file (0600) to `file`.
 */
export function makeNkeyUser(file: string): NkeyUser {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const d = Buffer.from(privateKey.export({ format: "jwk" }).d!, "base64url");
  const x = Buffer.from(publicKey.export({ format: "jwk" }).x!, "base64url");
  const seed = base32(
    withCrc([PREFIX_SEED | (PREFIX_USER >> 5), (PREFIX_USER & 31) << 3, ...d]),
  );
  const nkey = base32(withCrc([PREFIX_USER, ...x]));
  fs.writeFileSync(file, credsFileText(seed), { mode: 0o600 });
  return { nkey, seed, privateKey, creds: file };
}

/** What the account layout protects. */
export interface AccountLayout {
  /** JetStream stream name. @default {"MOAT"} */
  stream?: string;
  /** Subjects moat may publish. @default {`moat.${stream.toLowerCase()}.>`} */
  subjects?: string;
}

/**
 * The `accounts { … }` block of the server config: the exact text
 * docs/DEPLOY.md shows (with the keys it shows), which the tests use.
 *
 * The moat user may publish the vault's subjects, make the JetStream API
 * calls a publisher and an ordered/ephemeral-consumer reader need for this
 * one stream, and receive replies on `_INBOX.>`. Everything else is denied
 * by default (an allow list); the deny list names the administrative calls
 * explicitly so that a later, wider allow entry cannot let them through.
 */
export function accountsConfig(
  users: {
    admin: { nkey: string };
    moat: { nkey: string };
    sys: { user: string; password: string };
  },
  layout: AccountLayout = {},
): string {
  const stream = layout.stream ?? "MOAT";
  const subjects = layout.subjects ?? `moat.${stream.toLowerCase()}.>`;
  const q = (s: string) => JSON.stringify(s);
  return `system_account: SYS
accounts {
  SYS {
    users: [ { user: ${q(users.sys.user)}, password: ${
    q(users.sys.password)
  } } ]
  }
  MOAT {
    jetstream: enabled
    users: [
      # Creates the stream (with deny_delete and deny_purge); not given to moat.
      { nkey: ${users.admin.nkey} }
      # moat serve / moat vault: publish records, read them back, no administration.
      {
        nkey: ${users.moat.nkey}
        permissions: {
          publish: {
            allow: [
              ${q(subjects)}
              "$JS.API.INFO"
              "$JS.API.STREAM.INFO.${stream}"
              "$JS.API.STREAM.MSG.GET.${stream}"
              "$JS.API.DIRECT.GET.${stream}.>"
              "$JS.API.CONSUMER.CREATE.${stream}"
              "$JS.API.CONSUMER.CREATE.${stream}.>"
              "$JS.API.CONSUMER.INFO.${stream}.*"
              "$JS.API.CONSUMER.DELETE.${stream}.*"
              "$JS.API.CONSUMER.MSG.NEXT.${stream}.*"
              "$JS.ACK.${stream}.>"
              "$JS.FC.${stream}.>"
            ]
            deny: [
              "$JS.API.STREAM.CREATE.*"
              "$JS.API.STREAM.UPDATE.*"
              "$JS.API.STREAM.DELETE.*"
              "$JS.API.STREAM.PURGE.*"
              "$JS.API.STREAM.MSG.DELETE.*"
            ]
          }
          subscribe: { allow: [ "_INBOX.>" ] }
        }
      }
    ]
  }
}
`;
}

/** Options of {@link startNatsCluster}. */
export interface NatsClusterOptions extends AccountLayout {
  /** Parent directory for configs, logs and store dirs (the test's temp dir). */
  dir: string;
  /** 1 (no cluster block) or 3. @default {3} */
  nodes?: 1 | 3;
  /** How long each node may take to become healthy. @default {60_000} */
  readyTimeoutMs?: number;
}

/** One nats-server process of the cluster. */
export interface NatsNode {
  readonly name: string;
  readonly clientPort: number;
  readonly clusterPort: number;
  readonly monitorPort: number;
  /** `nats://127.0.0.1:<clientPort>` */
  readonly url: string;
  readonly storeDir: string;
  /** The running process, or undefined while the node is down. */
  readonly child: ChildProcess | undefined;
  /** Log lines (stderr) of the current process. */
  readonly log: string[];
}

/** A running cluster; `await using` stops every node. */
export interface NatsCluster {
  readonly nodes: readonly NatsNode[];
  readonly users: NatsUsers;
  readonly stream: string;
  readonly subjects: string;
  /** Every node's client URL, comma-separated: what `--vault nats://…` takes. */
  readonly servers: string;
  /** SIGKILL one node (by PID) and wait for it to exit. */
  kill(i: number): Promise<void>;
  /** Start a node again with the same ports and store; resolves when healthy. */
  restart(i: number): Promise<void>;
  /** Resolves when node i answers `/healthz` with 200. */
  healthy(i: number): Promise<void>;
  /** SIGKILL every running node by PID and wait for each to exit. */
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Free TCP ports on 127.0.0.1 (bound to port 0, then released). */
export async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      servers.push(s);
      await new Promise<void>((resolve, reject) => {
        s.once("error", reject);
        s.listen(0, "127.0.0.1", () => resolve());
      });
      ports.push((s.address() as net.AddressInfo).port);
    }
    return ports;
  } finally {
    await Promise.all(
      servers.map((s) => new Promise<void>((r) => s.close(() => r()))),
    );
  }
}

function randomPassword(): string {
  const b = new Uint8Array(18);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * Starts a 1- or 3-node JetStream cluster and waits until every node is
 * healthy. Throws (after stopping what it started) if a node does not come
 * up; callers skip with {@link noNats} when nats-server is absent.
 */
export async function startNatsCluster(
  options: NatsClusterOptions,
): Promise<NatsCluster> {
  const count = options.nodes ?? 3;
  const stream = options.stream ?? "MOAT";
  const subjects = options.subjects ?? `moat.${stream.toLowerCase()}.>`;
  const readyTimeoutMs = options.readyTimeoutMs ?? 60_000;
  const ports = await freePorts(3 * count);
  const root = path.join(options.dir, "nats");
  fs.mkdirSync(root, { recursive: true });
  const users: NatsUsers = {
    admin: makeNkeyUser(path.join(root, "admin.creds")),
    moat: makeNkeyUser(path.join(root, "moat.creds")),
    sys: { user: "sys", password: randomPassword() },
  };
  const accounts = accountsConfig(users, { stream, subjects });

  interface Node extends NatsNode {
    child: ChildProcess | undefined;
    log: string[];
    exited: Promise<void>;
    config: string;
  }
  const nodes: Node[] = [];
  for (let i = 0; i < count; i++) {
    const name = `n${i + 1}`;
    const [clientPort, clusterPort, monitorPort] = ports.slice(3 * i, 3 * i + 3)
      .map((p) => p!);
    const storeDir = path.join(root, name);
    fs.mkdirSync(storeDir, { recursive: true });
    nodes.push({
      name,
      clientPort: clientPort!,
      clusterPort: clusterPort!,
      monitorPort: monitorPort!,
      url: `nats://127.0.0.1:${clientPort}`,
      storeDir,
      child: undefined,
      log: [],
      exited: Promise.resolve(),
      config: path.join(root, `${name}.conf`),
    });
  }
  for (const node of nodes) {
    const routes = nodes.filter((n) => n !== node).map((n) =>
      `nats-route://127.0.0.1:${n.clusterPort}`
    );
    const cluster = count === 1 ? "" : `cluster {
  name: moat
  listen: 127.0.0.1:${node.clusterPort}
  routes: [ ${routes.join(", ")} ]
}
`;
    fs.writeFileSync(
      node.config,
      `server_name: ${node.name}
listen: 127.0.0.1:${node.clientPort}
http: 127.0.0.1:${node.monitorPort}
# Record messages pack up to ~1 MiB of records plus headers.
max_payload: 4MB
jetstream {
  store_dir: ${JSON.stringify(node.storeDir)}
  max_memory_store: 64MB
  max_file_store: 4GB
}
${cluster}${accounts}`,
    );
  }

  const launch = (node: Node): Promise<void> => {
    const child = spawn(NATS_SERVER, ["-c", node.config], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    node.child = child;
    node.log = [];
    const log = node.log;
    let buf = "";
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    const ready = new Promise<void>((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        log.push(line);
        if (line.includes("Server is ready")) readyResolve();
      }
    });
    node.exited = new Promise<void>((resolve) => {
      child.once("exit", () => {
        if (node.child === child) node.child = undefined;
        readyReject(
          new Error(
            `nats-server ${node.name} exited before it was ready:\n${
              log.join("\n")
            }`,
          ),
        );
        resolve();
      });
      child.once("error", (e) => {
        readyReject(new Error(`nats-server ${node.name}: ${e.message}`));
        resolve();
      });
    });
    return ready;
  };

  const healthy = async (i: number): Promise<void> => {
    const node = nodes[i]!;
    const deadline = Date.now() + readyTimeoutMs;
    let last = "";
    // The server says when it is ready: poll its health endpoint, which turns
    // 200 once this node has a meta leader and its streams are current.
    for (;;) {
      if (node.child === undefined) {
        throw new Error(
          `nats-server ${node.name} is not running:\n${node.log.join("\n")}`,
        );
      }
      try {
        const r = await fetch(
          `http://127.0.0.1:${node.monitorPort}/healthz`,
        );
        last = await r.text();
        if (r.status === 200) return;
      } catch (e) {
        last = String(e);
      }
      if (Date.now() > deadline) {
        throw new Error(
          `nats-server ${node.name} not healthy within ${readyTimeoutMs} ms: ${last}\n${
            node.log.slice(-20).join("\n")
          }`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const kill = async (i: number): Promise<void> => {
    const node = nodes[i]!;
    const child = node.child;
    if (child === undefined) return;
    try {
      process.kill(child.pid!, "SIGKILL");
    } catch {
      // already gone
    }
    await node.exited;
  };

  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map((_, i) => kill(i)));
  };

  const cluster: NatsCluster = {
    nodes,
    users,
    stream,
    subjects,
    servers: nodes.map((n) => `127.0.0.1:${n.clientPort}`).join(","),
    kill,
    restart: async (i) => {
      await kill(i);
      await launch(nodes[i]!);
      await healthy(i);
    },
    healthy,
    stop,
    [Symbol.asyncDispose]: stop,
  };
  try {
    await Promise.all(nodes.map(launch));
    for (let i = 0; i < count; i++) await healthy(i);
  } catch (e) {
    await stop();
    throw e;
  }
  return cluster;
}

// ---------------------------------------------------------------------------
// A minimal NATS client (protocol text over TCP), for asserting what the
// server itself answers to a given user.

/** A reply: the message, or the server's `-ERR` text. */
export type RawReply =
  | { ok: true; headers: string; data: Uint8Array; json(): unknown }
  | { ok: false; error: string };

/** A connection as one user. */
export interface RawConn {
  /**
   * Publishes and waits for the reply on a fresh inbox, or a server -ERR;
   * rejects after `timeoutMs` (the connection's, unless given).
   */
  request(
    subject: string,
    payload?: string | Uint8Array,
    headers?: Record<string, string>,
    timeoutMs?: number,
  ): Promise<RawReply>;
  /** A JetStream API call: the reply's JSON, or `{ permission: "…" }` on -ERR. */
  api(subject: string, body?: unknown): Promise<Record<string, unknown>>;
  close(): void;
  [Symbol.dispose](): void;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Connects to `port` on 127.0.0.1 as `user`, and resolves after the server's
 * PONG (so authentication has succeeded). Requests are answered in order;
 * one at a time is enough for the tests.
 */
export function rawConnect(
  port: number,
  user: NkeyUser,
  timeoutMs = 15_000,
): Promise<RawConn> {
  const sock = net.connect(port, "127.0.0.1");
  sock.setNoDelay(true);
  let buf = new Uint8Array(0);
  let pending:
    | { inbox: string; resolve: (r: RawReply) => void }
    | undefined;
  let onPong: (() => void) | undefined;
  let failed: ((e: Error) => void) | undefined;
  let sid = 0;
  let connected = false;

  const parse = () => {
    for (;;) {
      const nl = indexOfCrlf(buf);
      if (nl < 0) return;
      const line = dec.decode(buf.subarray(0, nl));
      if (line.startsWith("MSG ") || line.startsWith("HMSG ")) {
        const parts = line.split(" ");
        const isH = parts[0] === "HMSG";
        const total = Number(parts[parts.length - 1]);
        const hdrLen = isH ? Number(parts[parts.length - 2]) : 0;
        if (buf.length < nl + 2 + total + 2) return;
        const body = buf.subarray(nl + 2, nl + 2 + total);
        buf = buf.slice(nl + 2 + total + 2);
        const headers = dec.decode(body.subarray(0, hdrLen));
        const data = body.slice(hdrLen);
        if (pending !== undefined && parts[1] === pending.inbox) {
          const p = pending;
          pending = undefined;
          p.resolve({
            ok: true,
            headers,
            data,
            json: () => JSON.parse(dec.decode(data)),
          });
        }
        continue;
      }
      buf = buf.slice(nl + 2);
      if (line.startsWith("INFO ") && !connected) {
        // The server's first line, with the nonce to sign: answer with
        // CONNECT and a PING (its PONG means we are in).
        connected = true;
        const nonce = JSON.parse(line.slice(5)).nonce as string;
        const sig = sign(null, enc.encode(nonce), user.privateKey).toString(
          "base64url",
        );
        sock.write(
          `CONNECT ${
            JSON.stringify({
              verbose: false,
              pedantic: false,
              nkey: user.nkey,
              sig,
              headers: true,
              "no_responders": true,
              lang: "moat-test",
              version: "0",
              protocol: 1,
            })
          }\r\nPING\r\n`,
        );
      } else if (line === "PING") sock.write("PONG\r\n");
      else if (line === "PONG") onPong?.();
      else if (line.startsWith("-ERR")) {
        if (pending !== undefined) {
          const p = pending;
          pending = undefined;
          p.resolve({ ok: false, error: line });
        } else failed?.(new Error(line));
      }
    }
  };

  return new Promise<RawConn>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new Error(`NATS connect to ${port} timed out`)),
      timeoutMs,
    );
    const fail = (e: Error) => {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    };
    failed = fail;
    sock.on("error", fail);
    sock.on("data", (d: Uint8Array) => {
      const b = new Uint8Array(buf.length + d.length);
      b.set(buf);
      b.set(d, buf.length);
      buf = b;
      parse();
    });
    onPong = () => {
      clearTimeout(timer);
      onPong = undefined;
      failed = undefined;
      resolve(conn);
    };
    const conn: RawConn = {
      request(subject, payload = "", headers, waitMs = timeoutMs) {
        const inbox = `_INBOX.${randomPassword()}`;
        const s = ++sid;
        const data = typeof payload === "string"
          ? enc.encode(payload)
          : payload;
        return new Promise<RawReply>((res, rej) => {
          const t = setTimeout(() => {
            // A late reply to this inbox is ignored: the next request
            // replaces `pending`, and the server forgets the inbox.
            if (pending?.inbox === inbox) pending = undefined;
            sock.write(`UNSUB ${s}\r\n`);
            rej(new RequestTimeout(`No reply to ${subject} in ${waitMs} ms`));
          }, waitMs);
          pending = {
            inbox,
            resolve: (r) => {
              clearTimeout(t);
              sock.write(`UNSUB ${s}\r\n`);
              res(r);
            },
          };
          // One write per request: small writes in a row would wait on
          // Nagle's algorithm and the peer's delayed ack (~40 ms each).
          let head: Uint8Array;
          if (headers === undefined) {
            head = enc.encode(
              `SUB ${inbox} ${s}\r\nPUB ${subject} ${inbox} ${data.length}\r\n`,
            );
          } else {
            const hb = enc.encode(
              "NATS/1.0\r\n" +
                Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`)
                  .join("") +
                "\r\n",
            );
            const line = enc.encode(
              `SUB ${inbox} ${s}\r\nHPUB ${subject} ${inbox} ${hb.length} ${
                hb.length + data.length
              }\r\n`,
            );
            head = new Uint8Array(line.length + hb.length);
            head.set(line);
            head.set(hb, line.length);
          }
          const out = new Uint8Array(head.length + data.length + 2);
          out.set(head);
          out.set(data, head.length);
          out.set([13, 10], head.length + data.length);
          sock.write(out);
        });
      },
      async api(subject, body) {
        const r = await conn.request(
          subject,
          body === undefined ? "" : JSON.stringify(body),
        );
        if (!r.ok) return { permission: r.error };
        return r.json() as Record<string, unknown>;
      },
      close() {
        sock.destroy();
      },
      [Symbol.dispose]() {
        sock.destroy();
      },
    };
  });
}

/** A request that had no reply in time (the server may still have acted). */
export class RequestTimeout extends Error {}

function indexOfCrlf(b: Uint8Array): number {
  for (let i = 0; i + 1 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10) return i;
  }
  return -1;
}

/**
 * Publishes one message to a JetStream subject and resolves with the stream
 * sequence of its ack. While the stream has no leader (an election after a
 * node died) the server answers 503 (no responders) at once; that is retried
 * every 100 ms until `timeoutMs`. A replica that has lost its leader may also
 * drop the publish without a word: with a `Nats-Msg-Id` (the stream then
 * stores a resend once and acks it with the first one's seq) a publish with
 * no reply in 2 s is resent too; without one, silence rejects, since a resend
 * might store the message twice. Any other error rejects.
 */
export async function jsPublish(
  conn: RawConn,
  subject: string,
  data: string | Uint8Array,
  headers?: Record<string, string>,
  timeoutMs = 30_000,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  const resendable = headers?.["Nats-Msg-Id"] !== undefined;
  for (;;) {
    let r: RawReply;
    try {
      r = await conn.request(
        subject,
        data,
        headers,
        resendable ? 2_000 : undefined,
      );
    } catch (e) {
      if (e instanceof RequestTimeout && resendable && Date.now() < deadline) {
        continue;
      }
      throw e;
    }
    if (!r.ok) throw new Error(`Publish to ${subject}: ${r.error}`);
    if (r.data.length > 0) {
      const ack = r.json() as { seq?: number; error?: unknown };
      if (ack.error !== undefined || typeof ack.seq !== "number") {
        throw new Error(`Publish to ${subject}: ${JSON.stringify(ack)}`);
      }
      return ack.seq;
    }
    if (!/^NATS\/1\.0 503/.test(r.headers) || Date.now() > deadline) {
      throw new Error(`Publish to ${subject}: ${r.headers.split("\r\n")[0]}`);
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** The stream config the vault uses (contract in JETSTREAM.md). */
export function vaultStreamConfig(
  stream: string,
  subjects: string,
  replicas: number,
): Record<string, unknown> {
  return {
    name: stream,
    subjects: [subjects],
    retention: "limits",
    storage: "file",
    "num_replicas": replicas,
    "deny_delete": true,
    "deny_purge": true,
    "allow_rollup_hdrs": false,
    "duplicate_window": 120_000_000_000,
    "max_msg_size": 2 * 1024 * 1024,
    discard: "old",
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "max_consumers": -1,
    "max_msgs_per_subject": -1,
  };
}

/**
 * Creates the vault's stream as the admin user; throws with the server's
 * error if it refuses.
 */
export async function createVaultStream(
  cluster: NatsCluster,
  replicas = cluster.nodes.length,
): Promise<void> {
  using admin = await rawConnect(
    cluster.nodes[0]!.clientPort,
    cluster.users.admin,
  );
  const r = await admin.api(
    `$JS.API.STREAM.CREATE.${cluster.stream}`,
    vaultStreamConfig(cluster.stream, cluster.subjects, replicas),
  );
  if (r.error !== undefined || r.permission !== undefined) {
    throw new Error(
      `Cannot create stream ${cluster.stream}: ${
        JSON.stringify(r.error ?? r.permission)
      }`,
    );
  }
}

/**
 * Asks `state` every 100 ms until it says done; throws after `timeoutMs`
 * with `what` and the last state it described.
 */
async function pollUntil(
  state: () => Promise<true | string>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await state();
    if (now === true) return;
    if (Date.now() > deadline) {
      throw new Error(`${what} within ${timeoutMs} ms: ${now}`);
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** The meta cluster as node `via`'s monitoring `/jsz` reports it (empty if it does not answer). */
function metaCluster(
  cluster: NatsCluster,
  via: number,
): Promise<{ leader?: string } | undefined> {
  return fetch(`http://127.0.0.1:${cluster.nodes[via]!.monitorPort}/jsz`)
    .then((res) => res.json())
    .catch(() => ({}))
    .then((jsz: { "meta_cluster"?: { leader?: string } }) => jsz.meta_cluster);
}

/**
 * The stream's info as node `via` gets it for the moat user: the reply, or
 * the error of a request that timed out (each waits 2 s while the stream
 * has no leader).
 */
function streamInfo(conn: RawConn, cluster: NatsCluster): Promise<RawReply> {
  return conn.request(`$JS.API.STREAM.INFO.${cluster.stream}`)
    .catch((e: Error): RawReply => ({ ok: false, error: e.message }));
}

/**
 * Resolves once the stream has a leader that answers its info request, and
 * node `via` knows the meta leader (both are elected again after a leader's
 * node died or the quorum came back; `/healthz` may answer 200 before):
 * asked every 100 ms, as the moat user, until `timeoutMs`.
 */
export async function waitStreamLeader(
  cluster: NatsCluster,
  via = 0,
  timeoutMs = 60_000,
): Promise<void> {
  using conn = await rawConnect(
    cluster.nodes[via]!.clientPort,
    cluster.users.moat,
    2_000,
  );
  await pollUntil(
    async () => {
      const r = await streamInfo(conn, cluster);
      if (!r.ok || r.data.length === 0) {
        return r.ok ? r.headers.split("\r\n")[0]! : r.error;
      }
      const info = r.json() as { cluster?: { leader?: string } };
      // Consumers are placed by the meta leader: it must be back too.
      const meta = await metaCluster(cluster, via);
      if (info.cluster?.leader && meta?.leader) return true;
      return JSON.stringify({ stream: info.cluster, meta });
    },
    timeoutMs,
    `Stream ${cluster.stream} has no leader`,
  );
}

/**
 * Resolves once the stream answers node `via` with no leader (a request
 * that times out or an error reply). The meta leader goes first; the
 * stream's leader may keep answering reads for a few seconds more, until it
 * notices it lost its quorum and steps down.
 *
 * @param cluster The cluster.
 * @param via The node to ask.
 * @param timeoutMs The most to wait.
 */
export async function waitNoStreamLeader(
  cluster: NatsCluster,
  via = 0,
  timeoutMs = 60_000,
): Promise<void> {
  using conn = await rawConnect(
    cluster.nodes[via]!.clientPort,
    cluster.users.moat,
    2_000,
  );
  await pollUntil(
    async () => {
      const r = await streamInfo(conn, cluster);
      if (!r.ok || r.data.length === 0) return true;
      const info = r.json() as {
        error?: unknown;
        cluster?: { leader?: string };
      };
      if (info.error !== undefined || !info.cluster?.leader) return true;
      return JSON.stringify(info.cluster);
    },
    timeoutMs,
    `Stream ${cluster.stream} still has a leader`,
  );
}

/**
 * Resolves once node `via` has no JetStream meta leader any more (after a
 * majority of the nodes stopped, the survivors notice within seconds; until
 * then a stream leader among them may still answer): `/jsz` asked every
 * 100 ms until `timeoutMs`.
 */
export async function waitNoMetaLeader(
  cluster: NatsCluster,
  via = 0,
  timeoutMs = 60_000,
): Promise<void> {
  await pollUntil(
    async () => {
      const meta = await metaCluster(cluster, via);
      return meta !== undefined && !meta.leader ? true : JSON.stringify(meta);
    },
    timeoutMs,
    `Node ${via} still has a meta leader`,
  );
}
