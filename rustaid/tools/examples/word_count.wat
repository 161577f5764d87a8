;; An example rustaid WebAssembly tool, written in the WebAssembly text format.
;;
;; It follows the rustaid WASM tool ABI (docs/tools.md):
;;   exports  memory
;;            alloc(size: i32) -> i32                  memory for the host to write into
;;            tool_definitions() -> i64                (ptr << 32) | len of a JSON list
;;            tool_call(name_ptr, name_len, args_ptr, args_len: i32) -> i64
;;                                                     (ptr << 32) | len of
;;                                                     {"ok": RESULT} or {"error": "..."}
;;   imports  rustaid.log(ptr: i32, len: i32)          optional: one line to the daemon's log
;;
;; Tool `word_count` {"text": "..."} -> {"words": N, "characters": M}: it reads the first
;; string value of the arguments (the host has validated them against the schema, so
;; that is `text`), counting characters as Unicode code points and words as runs of
;; characters between spaces, tabs and newlines.
;;
;; Build it:  python -m rustaid.tools.wasm compile word_count.wat word_count.wasm
;; then drop word_count.wasm into the daemon's plugins/ folder.
(module
  (import "rustaid" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  ;; bump allocator: everything lives for one call (each call gets a fresh instance)
  (global $heap (mut i32) (i32.const 4096))

  ;; the tool definitions, 355 bytes
  (data (i32.const 16) "[{\"name\":\"word_count\",\"description\":\"Counts the words and characters of a text.\",\"parameters\":{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\",\"maxLength\":10000}},\"required\":[\"text\"],\"additionalProperties\":false},\"result\":{\"type\":\"object\",\"properties\":{\"words\":{\"type\":\"integer\"},\"characters\":{\"type\":\"integer\"}},\"required\":[\"words\",\"characters\"]}}]")
  (data (i32.const 1024) "word_count")  ;; name, 10 bytes
  (data (i32.const 1040) "{\"ok\":{\"words\":")  ;; ok_open, 15 bytes
  (data (i32.const 1072) ",\"characters\":")  ;; chars, 14 bytes
  (data (i32.const 1104) "}}")  ;; close, 2 bytes
  (data (i32.const 1120) "{\"error\":\"unknown tool: this module only has word_count\"}")  ;; unknown, 57 bytes
  (data (i32.const 1200) "word_count: counting")  ;; logmsg, 20 bytes

  (func $alloc (export "alloc") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7))
                             (i32.const -8)))
    (local.set $pages (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))

  (func (export "tool_definitions") (result i64)
    (call $pack (i32.const 16) (i32.const 355)))

  ;; copies len bytes from src to dst; returns dst + len
  (func $copy (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  ;; writes n in decimal at dst; returns the end
  (func $utoa (param $dst i32) (param $n i32) (result i32)
    (local $digits i32) (local $t i32) (local $i i32)
    (local.set $t (local.get $n))
    (local.set $digits (i32.const 1))
    (block $done (loop $count
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $done (i32.eqz (local.get $t)))
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (br $count)))
    (local.set $i (local.get $digits))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $write (local.get $i)))
    (i32.add (local.get $dst) (local.get $digits)))

  (func $is_name (param $ptr i32) (param $len i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $len) (i32.const 10)) (then (return (i32.const 0))))
    (block $differ (loop $next
      (br_if $differ (i32.ne (i32.load8_u (i32.add (local.get $ptr) (local.get $i)))
                             (i32.load8_u (i32.add (i32.const 1024) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (local.get $len)))
      (return (i32.const 1))))
    (i32.const 0))

  (func (export "tool_call") (param $name i32) (param $name_len i32)
                             (param $args i32) (param $args_len i32) (result i64)
    (local $p i32) (local $end i32) (local $c i32) (local $space i32)
    (local $words i32) (local $chars i32) (local $in_word i32) (local $out i32) (local $o i32)
    (if (i32.eqz (call $is_name (local.get $name) (local.get $name_len)))
      (then (return (call $pack (i32.const 1120) (i32.const 57)))))
    (call $log (i32.const 1200) (i32.const 20))
    (local.set $p (local.get $args))
    (local.set $end (i32.add (local.get $args) (local.get $args_len)))
    ;; skip to the first ':' and then to the opening quote of the value
    (block $found (loop $colon
      (br_if $found (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $c (i32.load8_u (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $found (i32.eq (local.get $c) (i32.const 58)))
      (br $colon)))
    (block $found (loop $quote
      (br_if $found (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $c (i32.load8_u (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $found (i32.eq (local.get $c) (i32.const 34)))
      (br $quote)))
    ;; count until the closing quote
    (block $stop (loop $scan
      (br_if $stop (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $c (i32.load8_u (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $stop (i32.eq (local.get $c) (i32.const 34)))
      (local.set $space (i32.or (i32.eq (local.get $c) (i32.const 32))
                                (i32.eq (local.get $c) (i32.const 9))))
      (if (i32.eq (local.get $c) (i32.const 92))  ;; an escape: \n \t \r are spaces
        (then
          (local.set $c (i32.load8_u (local.get $p)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (local.set $space (i32.or (i32.or (i32.eq (local.get $c) (i32.const 110))
                                            (i32.eq (local.get $c) (i32.const 116)))
                                    (i32.eq (local.get $c) (i32.const 114))))
          (if (i32.eq (local.get $c) (i32.const 117))  ;; \uXXXX
            (then (local.set $p (i32.add (local.get $p) (i32.const 4)))))))
      ;; UTF-8 continuation bytes do not start a character
      (if (i32.ne (i32.and (local.get $c) (i32.const 192)) (i32.const 128))
        (then (local.set $chars (i32.add (local.get $chars) (i32.const 1)))))
      (if (local.get $space)
        (then (local.set $in_word (i32.const 0)))
        (else
          (if (i32.eqz (local.get $in_word))
            (then (local.set $words (i32.add (local.get $words) (i32.const 1)))))
          (local.set $in_word (i32.const 1))))
      (br $scan)))
    ;; {"ok":{"words":N,"characters":M}}
    (local.set $out (call $alloc (i32.const 64)))
    (local.set $o (call $copy (local.get $out) (i32.const 1040) (i32.const 15)))
    (local.set $o (call $utoa (local.get $o) (local.get $words)))
    (local.set $o (call $copy (local.get $o) (i32.const 1072) (i32.const 14)))
    (local.set $o (call $utoa (local.get $o) (local.get $chars)))
    (local.set $o (call $copy (local.get $o) (i32.const 1104) (i32.const 2)))
    (call $pack (local.get $out) (i32.sub (local.get $o) (local.get $out))))
)
