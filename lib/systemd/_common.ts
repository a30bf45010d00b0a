/**
 * What the serve and ship units share: the flag and launcher types, the
 * folders that systemd's sandbox settings hide or replace, the program's
 * paths and the end of the unit.
 *
 * @module
 */

import * as path from "node:path";
import { checkPath } from "./_quote.ts";

/** One serve flag as given on the command line, in order. */
export interface ServeFlag {
  /** Long name without dashes, e.g. `"root"`. */
  name: string;
  /** The flag's value; absent for a boolean flag. */
  value?: string | undefined;
}

/** How the unit starts moat. */
export interface SystemdLauncher {
  /**
   * Absolute path of the program: the compiled moat binary, or the `deno` or
   * `bun` executable when moat runs from source.
   */
  executable: string;
  /** Absolute path of `main.ts` when moat runs from source under a runtime. */
  script?: string;
  /**
   * The runtime running `script`. With `"deno"` the unit runs
   * `deno run --no-prompt` with permissions narrowed to the listening
   * addresses, read access to the root and allow-files, and write access to
   * the log and vault.
   */
  runtime?: "deno" | "bun";
}

/** Dropped from ExecStart. */
export const OWN_FLAG = "print-systemd-unit";
/** Folders that `ProtectHome=` hides. */
export const HOME_DIRS = ["/home", "/root", "/run/user"];
/** Folders that `PrivateTmp=` replaces. */
export const TMP_DIRS = ["/tmp", "/var/tmp"];
/** The folder that `PrivateDevices=` replaces. */
export const DEV_DIR = "/dev";

/** `true` if `p` is `dir` or inside it. */
export function isUnder(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir + "/");
}

/** `true` if `p` is one of `dirs` or inside one. */
export function isUnderAny(p: string, dirs: readonly string[]): boolean {
  return dirs.some((d) => isUnder(p, d));
}

/**
 * The program the unit runs, as absolute paths: the executable, then the
 * script when moat runs from source.
 *
 * @param launcher How the unit starts moat.
 * @param cwd What a relative script path is relative to.
 * @returns One or two paths, each checked with `checkPath`.
 * @throws {UsageError} When a path cannot be written in a unit.
 */
export function programPaths(launcher: SystemdLauncher, cwd: string): string[] {
  const program = [launcher.executable];
  if (launcher.script !== undefined) {
    program.push(path.resolve(cwd, launcher.script));
  }
  for (const p of program) checkPath(p, "the program path");
  return program;
}

/**
 * The end of every unit moat prints: a private /tmp and /dev unless a path
 * the unit names is there, capabilities, the kernel and system call
 * restrictions, and the [Install] section. Both units run JavaScript, so
 * both keep MemoryDenyWriteExecute= off.
 *
 * @param paths Every path the unit names (read, written or run).
 * @param capability The one capability the service keeps ("" for none).
 * @returns The unit's lines.
 */
export function unitTail(
  paths: readonly string[],
  capability: string,
): string[] {
  const privateTmp = !paths.some((p) => isUnderAny(p, TMP_DIRS));
  const privateDevices = !paths.some((p) => isUnder(p, DEV_DIR));
  return [
    ...(privateTmp
      ? []
      : ["# A path above is in /tmp or /var/tmp: keep the host's."]),
    `PrivateTmp=${privateTmp ? "yes" : "no"}`,
    ...(privateDevices ? [] : ["# A path above is in /dev: keep the host's."]),
    `PrivateDevices=${privateDevices ? "yes" : "no"}`,
    "PrivateMounts=yes",
    "",
    "# Privileges and the kernel.",
    "NoNewPrivileges=yes",
    `CapabilityBoundingSet=${capability}`,
    `AmbientCapabilities=${capability}`,
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
    "# MemoryDenyWriteExecute= stays off: the JavaScript JIT needs W+X pages.",
    "",
    "[Install]",
    "WantedBy=multi-user.target",
  ];
}
