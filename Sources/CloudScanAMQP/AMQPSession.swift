internal import CRabbitMQ
import Foundation

/// One rabbitmq-c connection with one channel (1). Not thread-safe: owned by exactly one thread
/// (a publisher's or a consumer's), which makes every call. Destroys the connection exactly once.
final class AMQPSession {
    private var state: amqp_connection_state_t?
    let channel: amqp_channel_t = 1
    let heartbeatSeconds: Int

    /// Opens the socket, logs in (with capabilities), opens channel 1.
    init(_ configuration: AMQPConfiguration, connectionName: String) throws {
        guard let state = amqp_new_connection() else {
            throw AMQPError(code: .connectionFailed, message: "out of memory")
        }
        self.state = state
        self.heartbeatSeconds = configuration.heartbeatSeconds
        do {
            let socket: OpaquePointer
            if let tls = configuration.tls {
                guard let secure = amqp_ssl_socket_new(state) else {
                    throw AMQPError(code: .connectionFailed, message: "cannot create a TLS socket")
                }
                guard amqp_ssl_socket_set_cacert(secure, tls.caFile) == AMQP_STATUS_OK.rawValue else {
                    throw AMQPError(code: .invalidConfiguration, message: "cannot load the CA file \(tls.caFile)")
                }
                if let certificate = tls.certificateFile, let key = tls.keyFile {
                    guard amqp_ssl_socket_set_key(secure, certificate, key) == AMQP_STATUS_OK.rawValue else {
                        throw AMQPError(
                            code: .invalidConfiguration, message: "cannot load the client certificate \(certificate)")
                    }
                }
                amqp_ssl_socket_set_verify_peer(secure, tls.verifyPeer ? 1 : 0)
                amqp_ssl_socket_set_verify_hostname(secure, tls.verifyHostname ? 1 : 0)
                socket = secure
            } else {
                guard let plain = amqp_tcp_socket_new(state) else {
                    throw AMQPError(code: .connectionFailed, message: "cannot create a socket")
                }
                socket = plain
            }
            var timeout = timeval(
                tv_sec: Int(configuration.connectTimeout.components.seconds),
                tv_usec: Int(configuration.connectTimeout.components.attoseconds / 1_000_000_000_000))
            let opened = amqp_socket_open_noblock(socket, configuration.host, Int32(configuration.port), &timeout)
            guard opened == AMQP_STATUS_OK.rawValue else {
                throw AMQPError(
                    code: .connectionFailed,
                    message: "cannot connect to \(configuration.host):\(configuration.port): \(Self.statusText(opened))"
                )
            }
            amqp_set_handshake_timeout(state, &timeout)
            var rpcTimeout = timeval(
                tv_sec: Int(configuration.rpcTimeout.components.seconds),
                tv_usec: Int(configuration.rpcTimeout.components.attoseconds / 1_000_000_000_000))
            amqp_set_rpc_timeout(state, &rpcTimeout)
            let arena = CArena()
            var properties = arena.table([
                ("product", .string("cloudscan")),
                ("version", .string("0.1.0")),
                ("platform", .string("Swift / rabbitmq-c")),
                ("connection_name", .string(connectionName)),
                (
                    "capabilities",
                    .table([
                        ("publisher_confirms", .bool(true)),
                        ("consumer_cancel_notify", .bool(true)),
                        ("connection.blocked", .bool(true)),
                        ("basic.nack", .bool(true)),
                        ("authentication_failure_close", .bool(true)),
                    ])
                ),
            ])
            let reply = cloudscan_amqp_login_plain(
                state, configuration.virtualHost, 0, 131_072, Int32(configuration.heartbeatSeconds), &properties,
                configuration.user, configuration.password)
            do {
                try check(reply, "login to vhost \(configuration.virtualHost) as \(configuration.user)")
            } catch var error as AMQPError {
                error.code = .loginFailed
                throw error
            }
            amqp_channel_open(state, channel)
            try check(amqp_get_rpc_reply(state), "channel.open")
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    /// Frees the connection without the close handshake (which can hang on a dead peer).
    func destroy() {
        guard let state else { return }
        amqp_destroy_connection(state)
        self.state = nil
    }

    /// Closes politely (channel and connection), then frees.
    func close() {
        guard let state else { return }
        _ = amqp_channel_close(state, channel, AMQP_REPLY_SUCCESS)
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        destroy()
    }

    var isOpen: Bool { state != nil }

    /// The broker's `connection.start` properties that are text.
    var serverProperties: [String: String] {
        guard let state, let table = amqp_get_server_properties(state) else { return [:] }
        var out: [String: String] = [:]
        for (key, value) in CDecode.entries(table.pointee) {
            if let text = CDecode.text(value) { out[key] = text }
        }
        return out
    }

    /// The socket, for poll(2) and for the watchdog's shutdown(2).
    var socketDescriptor: Int32 { state.map { amqp_get_sockfd($0) } ?? -1 }

    /// Whether a frame can be read without touching the socket.
    var hasBufferedInput: Bool {
        guard let state else { return false }
        return amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0
    }

    private func live() throws -> amqp_connection_state_t {
        guard let state else { throw AMQPError(code: .connectionLost, message: "connection is closed") }
        return state
    }

    // MARK: Channel setup

    func confirmSelect() throws {
        let state = try live()
        amqp_confirm_select(state, channel)
        try check(amqp_get_rpc_reply(state), "confirm.select")
    }

    func qos(prefetch: Int) throws {
        let state = try live()
        amqp_basic_qos(state, channel, 0, UInt16(min(prefetch, 65535)), 0)
        try check(amqp_get_rpc_reply(state), "basic.qos")
    }

    /// Starts consuming; returns the consumer tag.
    func consume(queue: String, tag: String) throws -> String {
        let state = try live()
        let arena = CArena()
        guard
            let ok = amqp_basic_consume(
                state, channel, arena.bytes(queue), arena.bytes(tag), 0, 0, 0, amqp_empty_table)
        else {
            try check(amqp_get_rpc_reply(state), "basic.consume on \(queue)")
            throw AMQPError(code: .protocolError, message: "basic.consume on \(queue) failed")
        }
        return CDecode.string(ok.pointee.consumer_tag)
    }

    /// Sends basic.cancel without waiting for cancel-ok (deliveries may still arrive before it).
    func cancel(tag: String) throws {
        let state = try live()
        let arena = CArena()
        var method = amqp_basic_cancel_t(consumer_tag: arena.bytes(tag), nowait: 0)
        let status = amqp_send_method(state, channel, CS_AMQP_BASIC_CANCEL, &method)
        if status != AMQP_STATUS_OK.rawValue { throw lost(status, "basic.cancel") }
    }

    func declareExchange(name: String, type: String, durable: Bool, arguments: [(String, AMQPFieldValue)]) throws {
        let state = try live()
        let arena = CArena()
        amqp_exchange_declare(
            state, channel, arena.bytes(name), arena.bytes(type), 0, durable ? 1 : 0, 0, 0, arena.table(arguments))
        try check(amqp_get_rpc_reply(state), "exchange.declare \(name)")
    }

    /// Declares a queue; returns its message and consumer counts.
    @discardableResult
    func declareQueue(name: String, durable: Bool, passive: Bool = false, arguments: [(String, AMQPFieldValue)])
        throws -> (messages: Int, consumers: Int)
    {
        let state = try live()
        let arena = CArena()
        guard
            let ok = amqp_queue_declare(
                state, channel, arena.bytes(name), passive ? 1 : 0, durable ? 1 : 0, 0, 0, arena.table(arguments))
        else {
            try check(amqp_get_rpc_reply(state), "queue.declare \(name)")
            throw AMQPError(code: .protocolError, message: "queue.declare \(name) failed")
        }
        return (Int(ok.pointee.message_count), Int(ok.pointee.consumer_count))
    }

    func bindQueue(queue: String, exchange: String, routingKey: String) throws {
        let state = try live()
        let arena = CArena()
        amqp_queue_bind(
            state, channel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey), amqp_empty_table)
        try check(amqp_get_rpc_reply(state), "queue.bind \(queue) to \(exchange) (\(routingKey))")
    }

    func deleteQueue(name: String) throws {
        let state = try live()
        let arena = CArena()
        amqp_queue_delete(state, channel, arena.bytes(name), 0, 0)
        try check(amqp_get_rpc_reply(state), "queue.delete \(name)")
    }

    func deleteExchange(name: String) throws {
        let state = try live()
        let arena = CArena()
        amqp_exchange_delete(state, channel, arena.bytes(name), 0)
        try check(amqp_get_rpc_reply(state), "exchange.delete \(name)")
    }

    // MARK: Publishing and settling

    /// Writes a basic.publish (method, header and body frames). May block on a full socket.
    func publish(_ message: AMQPMessage, exchange: String, routingKey: String, mandatory: Bool) throws {
        let state = try live()
        let arena = CArena()
        var properties = amqp_basic_properties_t()
        var flags: UInt32 = CS_AMQP_FLAG_DELIVERY_MODE
        properties.delivery_mode = message.persistent ? 2 : 1
        func set(_ value: String?, _ flag: UInt32, _ field: WritableKeyPath<amqp_basic_properties_t, amqp_bytes_t>) {
            guard let value else { return }
            flags |= flag
            properties[keyPath: field] = arena.bytes(value)
        }
        set(message.contentType, CS_AMQP_FLAG_CONTENT_TYPE, \.content_type)
        set(message.type, CS_AMQP_FLAG_TYPE, \.type)
        set(message.messageID, CS_AMQP_FLAG_MESSAGE_ID, \.message_id)
        set(message.correlationID, CS_AMQP_FLAG_CORRELATION_ID, \.correlation_id)
        set(message.appID, CS_AMQP_FLAG_APP_ID, \.app_id)
        if let value = message.timestamp {
            flags |= CS_AMQP_FLAG_TIMESTAMP
            // A timestamp from outside may be anything a Double holds: clamp before converting.
            let seconds = value.timeIntervalSince1970
            properties.timestamp = seconds.isFinite && seconds > 0 ? UInt64(min(seconds, 253_402_300_799)) : 0
        }
        if !message.headers.isEmpty {
            flags |= CS_AMQP_FLAG_HEADERS
            properties.headers = arena.table(
                message.headers.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })
        }
        properties._flags = flags
        let status = amqp_basic_publish(
            state, channel, arena.bytes(exchange), arena.bytes(routingKey), mandatory ? 1 : 0, 0, &properties,
            arena.bytes(message.body))
        if status != AMQP_STATUS_OK.rawValue { throw lost(status, "basic.publish") }
    }

    func ack(_ tag: UInt64, multiple: Bool) throws {
        let status = amqp_basic_ack(try live(), channel, tag, multiple ? 1 : 0)
        if status != AMQP_STATUS_OK.rawValue { throw lost(status, "basic.ack") }
    }

    func nack(_ tag: UInt64, multiple: Bool, requeue: Bool) throws {
        let status = amqp_basic_nack(try live(), channel, tag, multiple ? 1 : 0, requeue ? 1 : 0)
        if status != AMQP_STATUS_OK.rawValue { throw lost(status, "basic.nack") }
    }

    func reject(_ tag: UInt64, requeue: Bool) throws {
        let status = amqp_basic_reject(try live(), channel, tag, requeue ? 1 : 0)
        if status != AMQP_STATUS_OK.rawValue { throw lost(status, "basic.reject") }
    }

    // MARK: Reading frames

    /// What the broker sent.
    enum Incoming {
        case deliver(AMQPDelivery)
        case ack(tag: UInt64, multiple: Bool)
        case nack(tag: UInt64, multiple: Bool)
        case returned(messageID: String?, replyCode: Int, replyText: String)
        case consumerCancelled(tag: String)
        case cancelOK
        case blocked(reason: String)
        case unblocked
        case channelClosed(code: Int, text: String)
        case connectionClosed(code: Int, text: String)
        case other
    }

    /// Reads one frame if one is available now (`nil` when none), servicing heartbeats.
    /// Throws ``AMQPError/Code/connectionLost`` on socket errors and missed heartbeats.
    func nextIncoming(generation: UInt64) throws -> Incoming? {
        let state = try live()
        var frame = amqp_frame_t()
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        let status = amqp_simple_wait_frame_noblock(state, &frame, &zero)
        if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
        if status != AMQP_STATUS_OK.rawValue { throw lost(status, "reading frames") }
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { return .other }
        let decoded = cloudscan_amqp_frame_method_decoded(&frame)
        switch cloudscan_amqp_frame_method_id(&frame) {
        case CS_AMQP_BASIC_DELIVER:
            let method = decoded!.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            let tag = method.delivery_tag
            let redelivered = method.redelivered != 0
            let exchange = CDecode.string(method.exchange)
            let routingKey = CDecode.string(method.routing_key)
            let (message, deaths) = try readContent(state, "reading a delivery")
            return .deliver(
                AMQPDelivery(
                    message: message, deliveryTag: tag, generation: generation, redelivered: redelivered,
                    exchange: exchange, routingKey: routingKey, deaths: deaths))
        case CS_AMQP_BASIC_ACK:
            let method = decoded!.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return .ack(tag: method.delivery_tag, multiple: method.multiple != 0)
        case CS_AMQP_BASIC_NACK:
            let method = decoded!.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return .nack(tag: method.delivery_tag, multiple: method.multiple != 0)
        case CS_AMQP_BASIC_RETURN:
            let method = decoded!.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let code = Int(method.reply_code)
            let text = CDecode.string(method.reply_text)
            let (message, _) = try readContent(state, "reading a returned message")
            return .returned(messageID: message.messageID, replyCode: code, replyText: text)
        case CS_AMQP_BASIC_CANCEL:
            let method = decoded!.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            return .consumerCancelled(tag: CDecode.string(method.consumer_tag))
        case CS_AMQP_CONNECTION_BLOCKED:
            let method = decoded!.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            return .blocked(reason: CDecode.string(method.reason))
        case CS_AMQP_CONNECTION_UNBLOCKED:
            return .unblocked
        case CS_AMQP_BASIC_CANCEL_OK:
            return .cancelOK
        case CS_AMQP_CHANNEL_CLOSE:
            let method = decoded!.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            var ok = amqp_channel_close_ok_t(dummy: 0)
            _ = amqp_send_method(state, channel, CS_AMQP_CHANNEL_CLOSE_OK, &ok)
            return .channelClosed(code: Int(method.reply_code), text: CDecode.string(method.reply_text))
        case CS_AMQP_CONNECTION_CLOSE:
            let method = decoded!.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            var ok = amqp_connection_close_ok_t(dummy: 0)
            _ = amqp_send_method(state, 0, CS_AMQP_CONNECTION_CLOSE_OK, &ok)
            return .connectionClosed(code: Int(method.reply_code), text: CDecode.string(method.reply_text))
        default:
            return .other
        }
    }

    /// Releases decoding memory between loop iterations.
    func releaseBuffers() {
        if let state { amqp_maybe_release_buffers(state) }
    }

    private func readContent(_ state: amqp_connection_state_t, _ what: String) throws -> (
        AMQPMessage, [AMQPDeathRecord]
    ) {
        var raw = amqp_message_t()
        let reply = amqp_read_message(state, channel, &raw, 0)
        try check(reply, what)
        defer { amqp_destroy_message(&raw) }
        let p = raw.properties
        let flags = p._flags
        var message = AMQPMessage(body: CDecode.array(raw.body), contentType: nil, persistent: p.delivery_mode == 2)
        if flags & CS_AMQP_FLAG_CONTENT_TYPE != 0 { message.contentType = CDecode.string(p.content_type) }
        if flags & CS_AMQP_FLAG_TYPE != 0 { message.type = CDecode.string(p.type) }
        if flags & CS_AMQP_FLAG_MESSAGE_ID != 0 { message.messageID = CDecode.string(p.message_id) }
        if flags & CS_AMQP_FLAG_CORRELATION_ID != 0 { message.correlationID = CDecode.string(p.correlation_id) }
        if flags & CS_AMQP_FLAG_APP_ID != 0 { message.appID = CDecode.string(p.app_id) }
        if flags & CS_AMQP_FLAG_TIMESTAMP != 0 {
            message.timestamp = Date(timeIntervalSince1970: TimeInterval(p.timestamp))
        }
        var deaths: [AMQPDeathRecord] = []
        if flags & CS_AMQP_FLAG_HEADERS != 0 {
            for (key, value) in CDecode.entries(p.headers) {
                if key == "x-death" {
                    deaths = CDecode.deaths(value)
                } else if let text = CDecode.text(value) {
                    message.headers[key] = text
                }
            }
        }
        return (message, deaths)
    }

    // MARK: Errors

    private func check(_ reply: amqp_rpc_reply_t, _ what: String) throws {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw AMQPError(code: .connectionLost, message: "\(what): \(Self.statusText(reply.library_error))")
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if reply.reply.id == CS_AMQP_CHANNEL_CLOSE, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                let text = CDecode.string(close.reply_text)
                // Answer the close, and reopen the channel so the session stays usable.
                if let state {
                    var ok = amqp_channel_close_ok_t(dummy: 0)
                    _ = amqp_send_method(state, channel, CS_AMQP_CHANNEL_CLOSE_OK, &ok)
                    amqp_channel_open(state, channel)
                }
                throw AMQPError(code: .channelClosed, message: "\(what): \(text)", replyCode: Int(close.reply_code))
            }
            if reply.reply.id == CS_AMQP_CONNECTION_CLOSE, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                let text = CDecode.string(close.reply_text)  // before destroy() frees it
                destroy()
                throw AMQPError(code: .connectionLost, message: "\(what): \(text)", replyCode: Int(close.reply_code))
            }
            throw AMQPError(code: .protocolError, message: "\(what): unexpected server method \(reply.reply.id)")
        default:
            throw AMQPError(code: .protocolError, message: "\(what): no reply")
        }
    }

    private func lost(_ status: Int32, _ what: String) -> AMQPError {
        AMQPError(code: .connectionLost, message: "\(what): \(Self.statusText(status))")
    }

    static func statusText(_ status: Int32) -> String {
        String(cString: amqp_error_string2(status))
    }
}
