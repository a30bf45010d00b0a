/**
 * Chat on the server: members of the hub (framed and plain), relaying a
 * member's line, and serving a framed chat client.
 *
 * @module
 */

import type { ChatMember } from "../chat.ts";
import { formatChatLine } from "../chat.ts";
import { encodeFrame, type FrameReader } from "../framer.ts";
import {
  type ChatLine,
  decodeText,
  encodeJson,
  encodeText,
  Kind,
} from "../protocol.ts";
import { Code, MoatError, ProtocolError } from "../errors.ts";
import { Outbox } from "./outbox.ts";
import { peerIdentity, type Session } from "./session.ts";

/** Bytes of chat a slow member may have queued before it is dropped. */
export const OUTBOX_LIMIT = 1 << 20;

/** A chat member whose queued lines can be awaited. */
export type QueuedMember = ChatMember & { flush(): Promise<void> };

/**
 * A session in the chat hub: lines are encoded for its kind of client
 * ({@linkcode encodeFramedChat} or {@linkcode encodePlainChat}) and queued.
 */
export class Member extends Outbox implements QueuedMember {
  /** The session's name, e.g. "c3". */
  readonly name: string;
  /** "host:port", and the proven identity if there is one. */
  readonly addr: string;
  #encode: (line: ChatLine) => Uint8Array;

  /**
   * Makes a member; it joins the hub only when the caller says so.
   *
   * @param session The member's session.
   * @param encode Turns a chat line into the bytes its client reads.
   */
  constructor(session: Session, encode: (line: ChatLine) => Uint8Array) {
    super(session);
    this.#encode = encode;
    this.name = session.name;
    this.addr = session.identity === undefined
      ? session.peer
      : `${session.peer} ${session.identity}`;
  }

  /**
   * Queues a line for this member.
   *
   * @param line The line.
   * @returns False when more than {@linkcode OUTBOX_LIMIT} bytes are queued.
   */
  deliver(line: ChatLine): boolean {
    return this.push(this.#encode(line), OUTBOX_LIMIT);
  }

  /**
   * Disconnects the member.
   *
   * @param reason Why, for the `closed` audit line.
   */
  drop(reason: string): void {
    this.end(reason);
  }
}

/**
 * An encoder that remembers the last line it encoded: a broadcast hands
 * the same line to every member in turn, so it is encoded once per kind of
 * client, not once per member (the bytes are shared; an outbox never
 * changes what it writes).
 */
function rememberingLast(
  encode: (line: ChatLine) => Uint8Array,
): (line: ChatLine) => Uint8Array {
  let last: ChatLine | undefined;
  let bytes: Uint8Array = new Uint8Array(0);
  return (line) => {
    if (line !== last) {
      bytes = encode(line);
      last = line;
    }
    return bytes;
  };
}

/**
 * A chat line as a framed client reads it: one Chat frame.
 *
 * @param line The line.
 * @returns The encoded frame.
 */
export function encodeFramedChat(line: ChatLine): Uint8Array {
  return encodeFrame({ type: Kind.Chat, payload: encodeJson(line) });
}

/**
 * A chat line as a plain-text client reads it: tagged, escaped, one line.
 *
 * @param line The line.
 * @returns The encoded text line.
 */
export function encodePlainChat(line: ChatLine): Uint8Array {
  return encodeText(formatChatLine(line) + "\n");
}

/** The encoder of framed members, shared by all of them (see {@linkcode rememberingLast}). */
export const framedMemberEncoder: (line: ChatLine) => Uint8Array =
  rememberingLast(encodeFramedChat);

/** The encoder of plain members, shared by all of them (see {@linkcode rememberingLast}). */
export const plainMemberEncoder: (line: ChatLine) => Uint8Array =
  rememberingLast(encodePlainChat);

/** One session's side of the chat rate (see {@linkcode chatRateOf}). */
export interface PeerRate {
  /** Spends a token of the peer's address now, if it has one. */
  tryTake(): boolean;
  /**
   * Spends a token, waiting until the rate allows; the session counts as
   * paused meanwhile, and the wait ends when it is closed.
   */
  take(): Promise<void>;
}

/**
 * The chat rate of a session's peer address (`--chat-rate`): a reader that
 * spends a token per line, and waits for one before it reads on, never
 * drops a line and holds at most one.
 *
 * @param s The session.
 * @returns Its rate, or undefined when chat is unlimited.
 */
export function chatRateOf(s: Session): PeerRate | undefined {
  const { chatRate, pauses } = s.server;
  if (chatRate === undefined) return undefined;
  const key = peerIdentity(s.conn.remoteAddr.hostname);
  return {
    tryTake: () => chatRate.tryTake(key),
    take: () => pauses.during(chatRate.take(key, s.closed)),
  };
}

/**
 * Relays a member's line to the operator and every other member (after the
 * server's `reply`, if set, to the member alone), and audits it. A chat
 * command (`/who`) is answered to the member alone instead.
 *
 * @param member The sender.
 * @param text The line, unescaped.
 */
export function relay(member: Member, text: string): void {
  const server = member.session.server;
  if (server.hub.command(text, member)) return;
  // Writes are started first and the audit line written after, in the same
  // turn: a crash cannot fall between them, and the answer does not wait
  // for the log's syscall.
  if (server.options.reply !== undefined) {
    server.hub.announce("server", server.options.reply, member);
  }
  server.hub.say(member, text);
  server.audit.write("chat", {
    peer: member.session.peer,
    name: member.name,
    text,
  });
}

/**
 * Serves a framed chat client after its Welcome: relays each Chat frame
 * until the client closes; a line over `maxLine` ends it with an Error frame.
 * Over its chat rate, the client is not read until the rate allows.
 *
 * @param s The session.
 * @param reader Its frames.
 * @throws {ProtocolError} For a frame that is not a Chat frame.
 */
export async function serveFramedChat(
  s: Session,
  reader: FrameReader,
): Promise<void> {
  const { hub, options } = s.server;
  const rate = chatRateOf(s);
  const member = new Member(s, framedMemberEncoder);
  hub.join(member);
  try {
    for (;;) {
      const header = await reader.readHeader();
      if (header === null) return;
      if (header.type !== Kind.Chat) {
        throw new ProtocolError(
          `Expected a chat frame, got type 0x${header.type.toString(16)}`,
        );
      }
      // Refused from the header alone: a line over the limit is never read.
      if (header.length > options.maxLine) {
        await s.sendError(
          new MoatError(
            Code.ERR_LINE_TOO_LONG,
            `Chat line of ${header.length} bytes exceeds the limit of ${options.maxLine}`,
          ),
        );
        s.reason = "chat line too long";
        return;
      }
      const text = decodeText(await reader.readPayload());
      if (rate !== undefined && !rate.tryTake()) await rate.take();
      relay(member, text);
    }
  } finally {
    hub.leave(member);
  }
}
