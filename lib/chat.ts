/**
 * The chat hub: who is connected, relaying each line to everyone else,
 * telling everyone who joins and leaves, and answering `/who`.
 *
 * @module
 */

import type { ChatLine } from "./protocol.ts";
import { escapeText } from "./text.ts";

/** The chat command that lists the members, answered to the asker alone. */
export const WHO_COMMAND = "/who";

/** Most members a `/who` answer names; the rest are only counted. */
export const WHO_MAX = 64;

/**
 * Presence lines (`joined`, `left`) named one by one in a second; past
 * that, joins and leaves are counted and told as one summary line a second
 * later. A presence line goes to every member, so N connections arriving
 * together would otherwise cost N² writes: a peer opening a thousand idle
 * connections made a Deno server hold 381 MiB of queued lines.
 */
export const PRESENCE_PER_SECOND = 8;

/** How long the hub counts presence before it tells the summary. */
const PRESENCE_WINDOW_MS = 1000;

/** The hub's clock and timer; tests give their own. */
export interface HubClock {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Runs `fn` after `ms`; returns what cancels it. */
  schedule(fn: () => void, ms: number): () => void;
}

const SYSTEM_CLOCK: HubClock = {
  now: () => performance.now(),
  schedule: (fn, ms) => {
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  },
};

/** One participant, framed or plain. */
export interface ChatMember {
  /** Server-assigned name, e.g. "c3". */
  readonly name: string;
  /** "host:port" as the server sees it. */
  readonly addr: string;
  /**
   * Queues a line for this member. Returns false when the member cannot keep
   * up (its queue is full); the hub then drops it.
   */
  deliver(line: ChatLine): boolean;
  /** Disconnects a member that could not keep up. */
  drop(reason: string): void;
}

/**
 * Formats a chat line for a terminal or a plain-text client: one line, tag
 * first, every control character in the text escaped so that no sender can
 * forge another's tag or drive the reader's terminal.
 *
 * @param line A chat line.
 * @returns e.g. `[c3 127.0.0.1:5000] hello`.
 */
export function formatChatLine(line: ChatLine): string {
  const tag = line.addr === "" ? line.from : `${line.from} ${line.addr}`;
  return `[${escapeText(tag)}] ${escapeText(line.text)}`;
}

/**
 * Relays lines between members and the operator. Every member and the
 * operator hear, from `server`, each member that joins or leaves (up to
 * {@linkcode PRESENCE_PER_SECOND} by name, then a count a second); `/who`
 * lists the members to whoever asked.
 *
 * @example Presence lines and /who
 * ```ts
 * import { ChatHub, type ChatMember, formatChatLine } from "./chat.ts";
 * import assert from "node:assert/strict";
 * const seen: string[] = [];
 * const member = (name: string, addr: string): ChatMember => ({
 *   name,
 *   addr,
 *   deliver: (line) => (seen.push(`${name} ${formatChatLine(line)}`), true),
 *   drop: () => {},
 * });
 * const hub = new ChatHub((line) => seen.push(`op ${formatChatLine(line)}`));
 * const a = member("c1", "127.0.0.1:5000");
 * hub.join(a);
 * hub.join(member("c2", "127.0.0.1:5001"));
 * assert.equal(hub.command("/who", a), true);
 * assert.deepEqual(seen, [
 *   "op [server] c1 (127.0.0.1:5000) joined",
 *   "op [server] c2 (127.0.0.1:5001) joined",
 *   "c1 [server] c2 (127.0.0.1:5001) joined",
 *   "c1 [server] 2 members: c1 (127.0.0.1:5000), c2 (127.0.0.1:5001)",
 * ]);
 * ```
 */
export class ChatHub {
  #members = new Map<string, ChatMember>();
  #operator: (line: ChatLine) => void;
  #closed = false;
  #clock: HubClock;
  /** When the current presence window ends. */
  #windowEnd = -Infinity;
  /** Presence lines named in the current window. */
  #named = 0;
  /** Joins and leaves counted for the next summary. */
  #joined = 0;
  #left = 0;
  /** Cancels the pending summary, while there is one. */
  #summary: (() => void) | undefined;

  /**
   * @param operator Shows each client line, and each presence line, to the
   * server's operator.
   * @param clock The clock and timer of presence summaries.
   */
  constructor(operator: (line: ChatLine) => void, clock = SYSTEM_CLOCK) {
    this.#operator = operator;
    this.#clock = clock;
  }

  /** Number of members. */
  get size(): number {
    return this.#members.size;
  }

  /**
   * Adds a member (no-op if present) and tells the operator and every other
   * member: `c7 (127.0.0.1:5000) joined`.
   *
   * @param member Joins the hub.
   */
  join(member: ChatMember): void {
    if (this.#members.get(member.name) === member) return;
    this.#members.set(member.name, member);
    this.#presence(member, "joined");
  }

  /**
   * Removes a member (no-op if absent) and tells the operator and every
   * other member: `c7 (127.0.0.1:5000) left`.
   *
   * @param member Leaves the hub.
   */
  leave(member: ChatMember): void {
    if (this.#members.get(member.name) !== member) return;
    this.#members.delete(member.name);
    this.#presence(member, "left");
  }

  /**
   * Relays a line from a member to the operator and every other member.
   *
   * @param from The sender.
   * @param text The line, unescaped.
   */
  say(from: ChatMember, text: string): void {
    const line: ChatLine = { from: from.name, addr: from.addr, text };
    this.#operator(line);
    this.#broadcast(line, from);
  }

  /**
   * Sends a line from the operator (or the server itself) to every member.
   *
   * @param from "operator" or "server".
   * @param text The line.
   * @param only If given, only this member receives it.
   */
  announce(from: string, text: string, only?: ChatMember): void {
    const line: ChatLine = { from, addr: "", text };
    if (only) {
      if (!only.deliver(line)) only.drop("slow consumer");
      return;
    }
    this.#broadcast(line, undefined);
  }

  /**
   * Answers a chat command to whoever typed it and nobody else: `/who`
   * (exactly) gets the list of members, from `server`.
   *
   * @param text A line typed by a member or the operator.
   * @param asker The member who typed it; the operator when absent.
   * @returns True when `text` was a command: it is then neither relayed nor
   * audited as a chat line.
   */
  command(text: string, asker?: ChatMember): boolean {
    if (text !== WHO_COMMAND) return false;
    if (asker === undefined) {
      this.#operator({ from: "server", addr: "", text: this.who() });
    } else {
      this.announce("server", this.who(), asker);
    }
    return true;
  }

  /**
   * The members, in the order they joined, as one line: at most
   * {@linkcode WHO_MAX} named, the rest counted.
   *
   * @returns e.g. `2 members: c1 (127.0.0.1:5000), c2 ([::1]:5001 token:bob)`.
   */
  who(): string {
    const n = this.#members.size;
    if (n === 0) return "no members";
    const named: string[] = [];
    for (const m of this.#members.values()) {
      if (named.length === WHO_MAX) break;
      named.push(describe(m));
    }
    const more = n > named.length ? `, and ${n - named.length} more` : "";
    return `${n} member${n === 1 ? "" : "s"}: ${named.join(", ")}${more}`;
  }

  /**
   * Stops presence lines: the server is shutting down, every member is
   * about to leave, and telling each of the others would cost N² writes to
   * connections that are closing anyway.
   */
  close(): void {
    this.#closed = true;
    this.#summary?.();
    this.#summary = undefined;
  }

  #presence(member: ChatMember, what: string) {
    const line = this.#presenceLine(member, what);
    if (line === undefined) return;
    this.#operator(line);
    this.#broadcast(line, member);
  }

  /**
   * The presence line to tell now, or undefined when there is none: the
   * hub is closed, or this second's named lines are spent (the event is
   * then counted for the summary).
   */
  #presenceLine(member: ChatMember, what: string): ChatLine | undefined {
    if (this.#closed) return undefined;
    const now = this.#clock.now();
    if (this.#summary === undefined && now >= this.#windowEnd) {
      this.#windowEnd = now + PRESENCE_WINDOW_MS;
      this.#named = 0;
    }
    if (this.#summary === undefined && this.#named < PRESENCE_PER_SECOND) {
      this.#named++;
      return { from: "server", addr: "", text: `${describe(member)} ${what}` };
    }
    if (what === "joined") this.#joined++;
    else this.#left++;
    this.#summary ??= this.#clock.schedule(
      () => this.#summarise(),
      Math.max(0, this.#windowEnd - now),
    );
    return undefined;
  }

  /**
   * Tells the joins and leaves counted in the last window as one line. The
   * next window stays counted (nothing named) so that steady churn costs one
   * line a second; a quiet window names lines again.
   */
  #summarise() {
    this.#summary = undefined;
    const parts: string[] = [];
    if (this.#joined > 0) parts.push(`${this.#joined} more joined`);
    if (this.#left > 0) parts.push(`${this.#left} more left`);
    this.#joined = this.#left = 0;
    this.#windowEnd = this.#clock.now() + PRESENCE_WINDOW_MS;
    this.#named = PRESENCE_PER_SECOND;
    if (this.#closed || parts.length === 0) return;
    const line: ChatLine = {
      from: "server",
      addr: "",
      text: `${parts.join(", ")} (${WHO_COMMAND} lists the members)`,
    };
    this.#operator(line);
    this.#broadcast(line, undefined);
  }

  #broadcast(line: ChatLine, except: ChatMember | undefined) {
    const dropped: ChatMember[] = [];
    this.#deliverAll(line, except, dropped);
    // Members dropped as slow consumers leave like any other: the others
    // are told (within the presence budget), which may drop more. Each
    // member is dropped at most once, so this ends.
    for (let i = 0; i < dropped.length && !this.#closed; i++) {
      const gone = this.#presenceLine(dropped[i]!, "left (slow consumer)");
      if (gone === undefined) continue;
      this.#operator(gone);
      this.#deliverAll(gone, undefined, dropped);
    }
  }

  #deliverAll(
    line: ChatLine,
    except: ChatMember | undefined,
    dropped: ChatMember[],
  ) {
    for (const m of [...this.#members.values()]) {
      if (m === except) continue;
      if (!m.deliver(line)) {
        this.#members.delete(m.name);
        m.drop("slow consumer");
        dropped.push(m);
      }
    }
  }
}

/** A member as presence lines and `/who` show it: `c7 (127.0.0.1:5000)`. */
function describe(member: ChatMember): string {
  return `${member.name} (${member.addr})`;
}
