/**
 * What signals mean to `moat serve`: SIGHUP reopens the audit log and
 * reloads the configuration files (what logrotate's `postrotate` and
 * `systemctl reload` send), SIGUSR1 is logged and otherwise ignored, SIGINT
 * and SIGTERM stop the server. Each leaves an audit line.
 *
 * @module
 */

import process from "node:process";
import type { AuditLog } from "../lib/audit.ts";
import type { ReloadResult } from "../lib/server/mod.ts";
import { escapeControls } from "../lib/text.ts";
import { inspector } from "../lib/builtins.ts";
import type { AuditFile } from "./serve_log.ts";

/**
 * How often, and how many times, to look for an inspector the runtime
 * opened on SIGUSR1: Deno opens it within a few milliseconds of the signal.
 */
const INSPECTOR_CHECK_MS = 1;
const INSPECTOR_CHECKS = 250;

/** What the signal handlers act on. */
export interface ServeSignals {
  /** Where each signal is logged. */
  audit: AuditLog;
  /** The audit log file, reopened on SIGHUP; undefined when it is stderr. */
  log?: AuditFile | undefined;
  /**
   * Reads the configuration files again and applies them (see
   * `Server.prototype.reload`); throws, with a one-line message, to refuse.
   */
  reload: () => ReloadResult;
  /** Stops the server after SIGINT or SIGTERM (its `signal` line is written). */
  stop: (signal: string) => Promise<void>;
  /** Shows the operator a line on stderr. */
  note: (message: string) => void;
}

/**
 * Installs the handlers. Call it before listening: a signal that comes at
 * once after the `listening` line must already mean what it should.
 *
 * @param s What the handlers act on.
 */
export function handleServeSignals(s: ServeSignals): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    s.audit.write("signal", { signal });
    void s.stop(signal);
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGHUP", () => {
    if (!stopping) reloadServe(s);
  });
  // A debugger started on purpose (--inspect) is left alone.
  const inspectorAtStart = inspectorUrl();
  process.on("SIGUSR1", () => {
    s.audit.write("signal", { signal: "SIGUSR1", action: "ignored" });
    if (typeof inspectorAtStart !== "string") closeInspector(s.audit);
  });
}

/**
 * Reopens the audit log file at its path, then reads the configuration
 * again and applies it. Each step that fails leaves what was in force and
 * writes a `reload_failed` line with the reason, also shown on stderr; a
 * configuration applied writes `reloaded`, naming what changed.
 *
 * @param s The audit log, its file, the reload and where notes go.
 */
export function reloadServe(
  s: Pick<ServeSignals, "audit" | "log" | "reload" | "note">,
): void {
  const fail = (reason: string) => {
    s.audit.write("reload_failed", { signal: "SIGHUP", reason });
    s.note(`reload refused: ${escapeControls(reason)}; nothing changed`);
  };
  let reopened = false;
  if (s.log !== undefined) {
    try {
      s.log.reopen();
      reopened = true;
    } catch (err) {
      fail(messageOf(err));
    }
  }
  try {
    const { changed, closed } = s.reload();
    s.audit.write("reloaded", {
      signal: "SIGHUP",
      changed,
      ...(closed > 0 && { closed }),
      ...(reopened && { log: s.log!.path }),
    });
  } catch (err) {
    fail(messageOf(err));
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The inspector's address: undefined when none is open, null when this
 * process may not ask (Deno without --allow-sys).
 */
function inspectorUrl(): string | undefined | null {
  try {
    return inspector().url();
  } catch {
    return null;
  }
}

/**
 * Deno (2.9.2 on) answers SIGUSR1 as node does: it opens the V8 inspector on
 * 127.0.0.1:9229, without authentication, so any local user could attach
 * and run code as moat. Bun 1.4.5 does not, but may (oven-sh/bun#37336).
 * The signal cannot be kept from the runtime, so for a while after it this
 * closes the inspector as soon as it shows, and logs `inspector_closed`.
 * Where moat may not ask whether one is open (Deno without --allow-sys),
 * it closes one at every check, which needs no permission, and cannot say.
 */
function closeInspector(audit: AuditLog): void {
  let checks = 0;
  const check = () => {
    const url = inspectorUrl();
    if (url !== undefined) {
      try {
        inspector().close();
      } catch (err) {
        if (url !== null) {
          audit.write("error", {
            url: withoutSession(url),
            message: `Cannot close the inspector SIGUSR1 opened: ${
              err instanceof Error ? err.message : String(err)
            }`,
          });
          return;
        }
      }
      if (url !== null) {
        audit.write("inspector_closed", { url: withoutSession(url) });
        return;
      }
    }
    if (++checks < INSPECTOR_CHECKS) setTimeout(check, INSPECTOR_CHECK_MS);
  };
  check();
}

/** "ws://127.0.0.1:9229/<uuid>" without its session id. */
function withoutSession(url: string): string {
  return url.replace(/\/[^/]*$/, "");
}
