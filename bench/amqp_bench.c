/*
 * Baseline for scripts/bench-amqp: the same work as the Swift layer, straight on librabbitmq.
 *   amqp_bench publish HOST PORT VHOST USER PASS QUEUE COUNT SIZE WINDOW
 *   amqp_bench consume HOST PORT VHOST USER PASS QUEUE COUNT PREFETCH
 * Publishes persistent messages with confirms (at most WINDOW unconfirmed) to the default
 * exchange, or consumes COUNT messages acking with multiple=true every 100. Prints
 * "COUNT SECONDS RATE".
 */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "amqp_bench: %s\n", what);
    exit(1);
}

static void check(amqp_rpc_reply_t r, const char *what) {
    if (r.reply_type != AMQP_RESPONSE_NORMAL) die(what);
}

int main(int argc, char **argv) {
    if (argc < 10) die("usage: see the header comment");
    const char *mode = argv[1], *host = argv[2], *vhost = argv[4], *user = argv[5], *pass = argv[6], *queue = argv[7];
    int port = atoi(argv[3]);
    long count = atol(argv[8]);
    long param = atol(argv[9]);

    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, host, port) != AMQP_STATUS_OK) die("connect");
    check(amqp_login(conn, vhost, 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, user, pass), "login");
    amqp_channel_open(conn, 1);
    check(amqp_get_rpc_reply(conn), "channel.open");

    double start = now();
    if (strcmp(mode, "publish") == 0) {
        long size = param, window = argc > 10 ? atol(argv[10]) : 1000;
        char *body = malloc(size);
        memset(body, 'x', size);
        amqp_confirm_select(conn, 1);
        check(amqp_get_rpc_reply(conn), "confirm.select");
        amqp_basic_properties_t props;
        props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.delivery_mode = 2;
        props.content_type = amqp_cstring_bytes("application/json");
        amqp_bytes_t bytes = {.len = size, .bytes = body};
        long published = 0, confirmed = 0;
        while (confirmed < count) {
            while (published < count && published - confirmed < window) {
                if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &props, bytes) != 0)
                    die("publish");
                published++;
            }
            amqp_frame_t frame;
            if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) die("wait frame");
            if (frame.frame_type != AMQP_FRAME_METHOD) continue;
            if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
                amqp_basic_ack_t *ack = frame.payload.method.decoded;
                confirmed = ack->multiple ? (long)ack->delivery_tag : confirmed + 1;
            } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
                die("nack");
            }
            amqp_maybe_release_buffers(conn);
        }
    } else {
        amqp_basic_qos(conn, 1, 0, (uint16_t)param, 0);
        check(amqp_get_rpc_reply(conn), "qos");
        amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        check(amqp_get_rpc_reply(conn), "consume");
        for (long received = 0; received < count;) {
            amqp_envelope_t envelope;
            amqp_maybe_release_buffers(conn);
            amqp_rpc_reply_t r = amqp_consume_message(conn, &envelope, NULL, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL) die("consume_message");
            received++;
            if (received % 100 == 0 || received == count) amqp_basic_ack(conn, 1, envelope.delivery_tag, 1);
            amqp_destroy_envelope(&envelope);
        }
    }
    double seconds = now() - start;
    printf("%ld %.3f %.0f\n", count, seconds, count / seconds);
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    return 0;
}
