/**
 * A least-privilege systemd unit for `moat ship`, generated from the flags
 * and inputs it was given. Pure, like the serve unit: `cli/ship.ts` resolves
 * the server's addresses, reads `--config` and probes the followed files, and
 * prints the result.
 *
 * @module
 */

import * as path from "node:path";
import { parseIp } from "../allowlist.ts";
import { UsageError } from "../errors.ts";
import {
  HOME_DIRS,
  isUnder,
  isUnderAny,
  OWN_FLAG,
  programPaths,
  type ServeFlag,
  type SystemdLauncher,
  unitTail,
} from "./_common.ts";
import {
  bindWord,
  checkPath,
  denoList,
  executableWord,
  pathWord,
  quoteSystemdArg,
} from "./_quote.ts";

/** The system user of the shipper's unit. */
const SHIP_USER = "moat-ship";
/** The shipper's state folder when no --state or --state-dir is given. */
const SHIP_STATE_DIR = `/var/lib/${SHIP_USER}`;
/** Ship flags whose value is a path to a file. */
const SHIP_PATH_FLAGS: ReadonlySet<string> = new Set([
  "config",
  "ca",
  "cert",
  "key",
  "token-file",
]);
/** Ship flags the unit writes itself (or drops). */
const SHIP_OWN_FLAGS: ReadonlySet<string> = new Set([
  OWN_FLAG,
  "server",
  "state",
  "state-dir",
]);

/** One input of the shipper's unit. */
export interface ShipUnitInput {
  /** Absolute path of a followed file. */
  path: string;
  /** Its source name, when given as `FILE=NAME`. */
  name?: string | undefined;
}

/** Options for {@linkcode renderShipUnit}. */
export interface ShipUnitOptions {
  /** The program that runs moat. */
  launcher: SystemdLauncher;
  /**
   * The `ship` flags as given, in order. `print-systemd-unit`, `server`,
   * `state` and `state-dir` are written by the unit itself; the values of
   * `config`, `ca`, `cert`, `key` and `token-file` are made absolute.
   */
  flags: readonly ServeFlag[];
  /** The files given on the command line (not those of `--config`). */
  inputs: readonly ShipUnitInput[];
  /** Every followed file, from the command line and `--config`. */
  followed: readonly string[];
  /** Absolute directory that relative paths in `flags` are resolved against. */
  cwd: string;
  /**
   * The server, as the unit's `--server`; or several front doors of one
   * vault, in order.
   */
  server:
    | { hostname: string; port: number }
    | readonly { hostname: string; port: number }[];
  /**
   * The server's addresses (every door's): itself for an IP address, else
   * what its name resolved to when the unit was made. The kernel lets only
   * these through.
   */
  serverAddresses: readonly string[];
  /** Name servers to let through as well when the server is a name. */
  nameServers?: readonly string[];
  /** `--state FILE` or `--state-dir DIR` as given (absolute); else a folder under /var/lib. */
  state?: { file: string } | { dir: string };
  /** Groups that can read followed files the user could not read otherwise. */
  readGroups?: readonly string[];
  /** Followed files only their owner can read (warned about in a comment). */
  unreadable?: readonly string[];
  /** moat's version, for the header comment. */
  version?: string;
}

/** An IP address as systemd's `IPAddressAllow=` takes it. */
function _address(text: string): string {
  const bare = text.startsWith("[") && text.endsWith("]")
    ? text.slice(1, -1)
    : text;
  if (parseIp(bare) === null || bare.includes("%")) {
    throw new UsageError(
      `Cannot write a systemd unit: ${
        JSON.stringify(text)
      } is not an IP address`,
    );
  }
  return bare;
}

/** `host:port` for `--server`, IPv6 in brackets. */
function _hostPort(server: { hostname: string; port: number }): string {
  const host = server.hostname.includes(":") && !server.hostname.startsWith("[")
    ? `[${server.hostname}]`
    : server.hostname;
  return `${host}:${server.port}`;
}

/**
 * The folder a state path needs writable: a `StateDirectory=` under
 * /var/lib, else a path that must exist.
 */
function _stateAccess(dir: string): { stateDirectory?: string; path: string } {
  if (dir === "/var/lib" || dir === "/" || !dir.startsWith("/")) {
    throw new UsageError(
      `Cannot write a systemd unit: the state folder ${
        JSON.stringify(dir)
      } must be a folder of its own (e.g. ${SHIP_STATE_DIR})`,
    );
  }
  if (isUnder(dir, "/var/lib")) {
    return { stateDirectory: path.posix.relative("/var/lib", dir), path: dir };
  }
  return { path: dir };
}

/**
 * Renders a least-privilege systemd service unit that runs `moat ship` with
 * the given flags and inputs.
 *
 * What the unit does:
 * - runs as the static system user `moat-ship`, with no capabilities, no
 *   new privileges and the serve unit's system call filter;
 * - the whole file system read-only (`ProtectSystem=strict`), the followed
 *   files' folders listed in `ReadOnlyPaths=`, home folders hidden (or only
 *   the needed paths bound in), and `SupplementaryGroups=` for the groups
 *   that can read the followed files;
 * - the state writable: `StateDirectory=` for a state folder under
 *   /var/lib (the default, `--state-dir /var/lib/moat-ship`), else
 *   `ReadWritePaths=`;
 * - `IPAddressDeny=any` and `IPAddressAllow=` only the server's addresses
 *   (plus the name servers, when the server is given by name);
 * - `Restart=always`, except after a usage error (exit 2).
 *
 * @example A unit for two log files
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderShipUnit } from "./mod.ts";
 *
 * const unit = renderShipUnit({
 *   launcher: { executable: "/usr/local/bin/moat" },
 *   flags: [],
 *   inputs: [{ path: "/var/log/auth.log" }, { path: "/var/log/syslog", name: "system" }],
 *   followed: ["/var/log/auth.log", "/var/log/syslog"],
 *   cwd: "/",
 *   server: { hostname: "10.0.0.1", port: 4320 },
 *   serverAddresses: ["10.0.0.1"],
 * });
 * assert.match(
 *   unit,
 *   /^ExecStart=\/usr\/local\/bin\/moat ship \/var\/log\/auth\.log \/var\/log\/syslog=system --server 10\.0\.0\.1:4320 --state-dir \/var\/lib\/moat-ship$/m,
 * );
 * assert.match(unit, /^IPAddressDeny=any\nIPAddressAllow=10\.0\.0\.1$/m);
 * assert.match(unit, /^StateDirectory=moat-ship$/m);
 * ```
 *
 * @param options The launcher, flags, inputs, server and state.
 * @returns The unit file text, ending with a newline.
 * @throws {UsageError} For standard input, no server address, a program
 * path that is not absolute or holds a quote, backslash, `$` or control
 * character, a path with a control character, trust on first use (`--tls`
 * without `--ca` or `--pin`), or a state folder that is not one of its own.
 */
export function renderShipUnit(options: ShipUnitOptions): string {
  const { launcher, cwd } = options;
  const exe = executableWord(launcher.executable);
  if (options.inputs.some((i) => i.path === "-")) {
    throw new UsageError(
      'Cannot write a systemd unit that reads standard input ("-"): a service has none',
    );
  }
  const has = (name: string) => options.flags.some((f) => f.name === name);
  if (has("tls") && !has("ca") && !has("pin")) {
    throw new UsageError(
      "Cannot write a systemd unit that trusts the server on first use: add --pin FP or --ca FILE",
    );
  }
  const doors = "hostname" in options.server
    ? [options.server]
    : options.server;
  const addresses = [...new Set(options.serverAddresses.map(_address))];
  if (addresses.length === 0) {
    throw new UsageError(
      `Cannot write a systemd unit: ${
        JSON.stringify(doors[0]?.hostname)
      } has no address`,
    );
  }
  const names = doors.map((d) => d.hostname).filter((h) =>
    parseIp(h.replace(/^\[|\]$/g, "")) === null
  );
  const byName = names.length > 0;
  const nameServers = byName
    ? [...new Set((options.nameServers ?? []).map(_address))]
    : [];

  // Words after "ship": the inputs, the flags as given (paths absolute),
  // then the server and the state, always explicit.
  const words: string[] = ["ship"];
  for (const input of options.inputs) {
    checkPath(input.path, "the input");
    words.push(
      input.name === undefined ? input.path : `${input.path}=${input.name}`,
    );
  }
  const readOnly: string[] = [];
  for (const f of options.flags) {
    if (SHIP_OWN_FLAGS.has(f.name)) continue;
    let value = f.value;
    if (value !== undefined && SHIP_PATH_FLAGS.has(f.name)) {
      value = path.resolve(cwd, value);
      checkPath(value, `--${f.name}`);
      readOnly.push(value);
    }
    words.push(`--${f.name}`);
    if (value !== undefined) words.push(value);
  }
  words.push("--server", doors.map(_hostPort).join(","));
  const state = options.state ?? { dir: SHIP_STATE_DIR };
  let stateDir: string;
  if ("file" in state) {
    const file = path.resolve(cwd, state.file);
    checkPath(file, "--state");
    words.push("--state", file);
    stateDir = path.posix.dirname(file);
  } else {
    stateDir = path.resolve(cwd, state.dir);
    checkPath(stateDir, "--state-dir");
    words.push("--state-dir", stateDir);
  }
  const access = _stateAccess(stateDir);
  const readWrite = access.stateDirectory === undefined ? [access.path] : [];

  const folders: string[] = [];
  for (const file of options.followed) {
    checkPath(file, "the input");
    const dir = path.posix.dirname(file);
    if (!folders.includes(dir)) folders.push(dir);
  }
  const program = programPaths(launcher, cwd);
  const all = [...folders, ...readOnly, ...readWrite, ...program];
  const home = all.some((p) => isUnderAny(p, HOME_DIRS));
  const deno = launcher.runtime === "deno" && launcher.script !== undefined;

  const command: string[] = [];
  if (launcher.script !== undefined) {
    if (deno) {
      const env = has("token-file") ? [] : ["MOAT_TOKEN"];
      command.push(
        "run",
        "--no-prompt",
        denoList("allow-net", doors.map(_hostPort)),
        denoList("allow-read", [...folders, ...readOnly, stateDir]),
        denoList("allow-write", [stateDir]),
      );
      if (env.length > 0) command.push(denoList("allow-env", env));
    }
    command.push(program[1]!);
  }
  command.push(...words);
  const execStart = [exe, ...command.map(quoteSystemdArg)].join(" ");

  const server = doors.map(_hostPort).join(", ");
  const l: string[] = [];
  const push = (...lines: string[]) => l.push(...lines);
  push(
    `# Generated by \`moat ship --print-systemd-unit\`${
      options.version ? ` (moat ${options.version})` : ""
    }.`,
    `# Install: useradd --system --no-create-home --shell /usr/sbin/nologin ${SHIP_USER}`,
    `# then save as /etc/systemd/system/${SHIP_USER}.service and run`,
    `# systemctl daemon-reload && systemctl enable --now ${SHIP_USER}`,
    `# The state is in ${stateDir}: a shipper that ran before with another state`,
    "# must keep it (copy it there), or the server refuses to skip its records.",
    "",
    "[Unit]",
    `Description=moat log shipper to ${server}`,
    "Wants=network-online.target",
    "After=network-online.target",
    "",
    "[Service]",
    "Type=exec",
    `ExecStart=${execStart}`,
    "# Keep shipping through any failure but a bad command line.",
    "Restart=always",
    "RestartSec=5s",
    "RestartPreventExitStatus=2",
    "TimeoutStopSec=15s",
    "",
    "# A dedicated, unprivileged user.",
    `User=${SHIP_USER}`,
    `Group=${SHIP_USER}`,
  );
  if (options.readGroups !== undefined && options.readGroups.length > 0) {
    for (const g of options.readGroups) {
      if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(g)) {
        throw new UsageError(
          `Cannot write a systemd unit: the group name ${
            JSON.stringify(g)
          } is not one systemd accepts`,
        );
      }
    }
    push(
      "# The followed files are readable by these groups, not by everyone.",
      `SupplementaryGroups=${options.readGroups.join(" ")}`,
    );
  }
  if (options.unreadable !== undefined && options.unreadable.length > 0) {
    push(
      `# WARNING: only their owner can read ${
        options.unreadable.map((p) => JSON.stringify(p)).join(", ")
      }:`,
      `# give ${SHIP_USER} read access, also to the files rotation creates`,
      `# (e.g. setfacl -d -m u:${SHIP_USER}:r on the folder), or the unit cannot ship them.`,
    );
  }
  push(
    "UMask=0077",
    "",
    "# The kernel drops every packet to or from any other address.",
    "IPAddressDeny=any",
  );
  for (const a of addresses) push(`IPAddressAllow=${a}`);
  if (byName) {
    push(
      `# ${
        names.join(", ")
      } resolved to the addresses above when the unit was made:`,
      "# regenerate the unit when they change. The name servers it is resolved with:",
    );
    for (const a of nameServers) push(`IPAddressAllow=${a}`);
    if (nameServers.length === 0) {
      push("# (none found: give --server as an IP address)");
    }
  }
  push(
    // Deno's signal handling, and name lookups through NSS, use Unix sockets.
    `RestrictAddressFamilies=AF_INET AF_INET6${
      deno || byName ? " AF_UNIX" : ""
    }`,
    "",
    "# Files: everything read-only; the followed files' folders and the options'",
    "# files readable; only the state writable.",
    "ProtectSystem=strict",
    `ProtectHome=${home ? "tmpfs" : "yes"}`,
  );
  if (home) {
    const ro = [...folders, ...readOnly, ...program].filter((p) =>
      isUnderAny(p, HOME_DIRS)
    );
    const rw = readWrite.filter((p) => isUnderAny(p, HOME_DIRS));
    // "-": a followed folder that does not exist yet is waited for.
    if (ro.length > 0) {
      push(`BindReadOnlyPaths=${ro.map((p) => "-" + bindWord(p)).join(" ")}`);
    }
    if (rw.length > 0) push(`BindPaths=${rw.map(bindWord).join(" ")}`);
  }
  if (has("config")) {
    push(
      "# The folders below were read from --config as it is now:",
      "# regenerate the unit whenever it changes.",
    );
  }
  push(
    `ReadOnlyPaths=${
      [...folders.map((p) => "-" + pathWord(p)), ...readOnly.map(pathWord)]
        .join(" ")
    }`,
  );
  if (access.stateDirectory !== undefined) {
    push(
      `StateDirectory=${pathWord(access.stateDirectory)}`,
      "StateDirectoryMode=0700",
    );
  } else {
    push(
      `# Must exist and be writable by ${SHIP_USER}.`,
      `ReadWritePaths=${readWrite.map(pathWord).join(" ")}`,
    );
  }
  if (deno) {
    push("CacheDirectory=moat-ship", "Environment=DENO_DIR=%C/moat-ship/deno");
  }
  push(...unitTail(all, ""));
  return l.join("\n") + "\n";
}
