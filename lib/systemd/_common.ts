/**
 * What the serve and ship units share: the flag and launcher types, and the
 * folders that systemd's sandbox settings hide or replace.
 *
 * @module
 */

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
 * The end of every unit moat prints: capabilities, the kernel and system
 * call restrictions, and the [Install] section. Both units run JavaScript,
 * so both keep MemoryDenyWriteExecute= off.
 *
 * @param capability The one capability the service keeps ("" for none).
 * @returns The unit's lines.
 */
export function kernelHardening(capability: string): string[] {
  return [
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
