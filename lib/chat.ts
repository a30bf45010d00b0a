/**
 * The chat hub: who is connected, and relaying each line to everyone else.
 *
 * @module
 */

import type { ChatLine } from "./protocol.ts";
import { escapeText } from "./text.ts";

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

/** Relays lines between members and the operator. */
export class ChatHub {
  #members = new Map<string, ChatMember>();
  #operator: (line: ChatLine) => void;

  /**
   * @param operator Shows each client line to the server's operator.
   */
  constructor(operator: (line: ChatLine) => void) {
    this.#operator = operator;
  }

  /** Number of members. */
  get size(): number {
    return this.#members.size;
  }

  /**
   * @param member Joins the hub.
   */
  join(member: ChatMember): void {
    this.#members.set(member.name, member);
  }

  /**
   * @param member Leaves the hub (no-op if absent).
   */
  leave(member: ChatMember): void {
    if (this.#members.get(member.name) === member) {
      this.#members.delete(member.name);
    }
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

  #broadcast(line: ChatLine, except: ChatMember | undefined) {
    for (const m of [...this.#members.values()]) {
      if (m === except) continue;
      if (!m.deliver(line)) {
        this.#members.delete(m.name);
        m.drop("slow consumer");
      }
    }
  }
}
