-- Wireshark dissector for pcinet traces (`pcinet trace -w FILE`; docs/OPERATING.md, "pcinet trace").
-- A capture holds one trace record per packet, link type LINKTYPE_USER0 (proto/trace.ts):
--   u8 version (1), u8 flags (1 device->host, 2 kernel link, 4 payload truncated, 8 recorded by
--   the host-agent), u16 reserved, u32le device, u32le payload length before truncation, then
--   one pcinet.Msg in protobuf encoding (proto/pcinet.proto).
-- Use: wireshark -X lua_script:packaging/wireshark/pcinet.lua FILE.pcapng
--      tshark -X lua_script:packaging/wireshark/pcinet.lua -r FILE.pcapng -V
--   or copy this file into ~/.local/lib/wireshark/plugins/ (then no -X is needed).
-- Display filters: pcinet.kind == "mmio_write", pcinet.dev == 1, pcinet.to_host == 1, pcinet.link == 1,
--   pcinet.<message>.<field> (pcinet.mmio_write.offset == 0x1000, pcinet.dma_write.iova …).
-- SPDX-License-Identifier: Apache-2.0

-- BEGIN SCHEMA (scripts/gen-dissector.mjs writes this block from proto/pcinet.proto)
local ENUMS = {
  ErrorCode = { [0] = "OK", [1] = "BAD_LENGTH", [2] = "FRAME_TOO_LARGE", [3] = "MALFORMED", [4] = "UNKNOWN_MESSAGE", [5] = "BAD_VERSION", [6] = "OUT_OF_ORDER", [7] = "UNEXPECTED_MESSAGE", [8] = "SESSION_UNKNOWN", [9] = "AUTH_REFUSED", [10] = "UNKNOWN_DEVICE", [11] = "BAD_TAG", [12] = "BAD_ARGUMENT", [13] = "DMA_FAULT", [14] = "TIMEOUT", [15] = "REPLAY_OVERFLOW", [16] = "SHUTDOWN", [17] = "INTERNAL", [18] = "ATTACH_FAILED", [19] = "BAD_CONFIG", [20] = "BUSY", [21] = "LINK_LOST" },
  Capability = { [0] = "CAP_NONE", [1] = "CAP_WRITES_APPLIED", [2] = "CAP_PUSH_RULES", [4] = "CAP_STATS", [8] = "CAP_KERNEL_LINK", [16] = "CAP_VIRTQ_ROUNDS", [32] = "CAP_SQ_EVENT_IDX" },
  BarKind = { [0] = "BAR_NONE", [1] = "BAR_MEM32", [2] = "BAR_MEM64", [3] = "BAR_IO" },
  PushKind = { [0] = "PUSH_NONE", [1] = "PUSH_NVME_SQ", [2] = "PUSH_VIRTQ" },
}
-- message type -> field number -> { name, kind, type (enum or message) }
local MESSAGES = {
  Frame = {
    [1] = { "seq", "uint64" },
    [2] = { "ack", "uint64" },
    [3] = { "msgs", "message", "Msg" },
  },
  Msg = {
    [1] = { "hello", "message", "Hello" },
    [2] = { "resume", "message", "Resume" },
    [3] = { "keep_alive", "message", "KeepAlive" },
    [4] = { "error", "message", "Error" },
    [10] = { "attach", "message", "Attach" },
    [11] = { "attach_result", "message", "AttachResult" },
    [12] = { "detach", "message", "Detach" },
    [13] = { "function_reset", "message", "FunctionReset" },
    [14] = { "stats_request", "message", "StatsRequest" },
    [15] = { "stats", "message", "Stats" },
    [20] = { "mmio_write", "message", "MmioWrite" },
    [21] = { "mmio_read", "message", "MmioRead" },
    [22] = { "dma_read_cpl", "message", "DmaReadCpl" },
    [23] = { "config_write", "message", "ConfigWrite" },
    [24] = { "push", "message", "Push" },
    [25] = { "push_drop", "message", "PushDrop" },
    [26] = { "push_rule_set", "message", "PushRuleSet" },
    [30] = { "shadow_update", "message", "ShadowUpdate" },
    [31] = { "writes_applied", "message", "WritesApplied" },
    [32] = { "mmio_read_cpl", "message", "MmioReadCpl" },
    [33] = { "dma_read", "message", "DmaRead" },
    [34] = { "dma_write", "message", "DmaWrite" },
    [35] = { "interrupt", "message", "Interrupt" },
    [36] = { "push_rule", "message", "PushRule" },
    [37] = { "virtq_done", "message", "VirtqDone" },
  },
  Hello = {
    [1] = { "version", "uint32" },
    [2] = { "capabilities", "uint64" },
    [3] = { "agent", "string" },
    [4] = { "session_id", "bytes" },
    [5] = { "keepalive_ms", "uint32" },
  },
  Resume = {
    [1] = { "version", "uint32" },
    [2] = { "session_id", "bytes" },
    [3] = { "received_seq", "uint64" },
  },
  KeepAlive = {
    [1] = { "nonce", "uint64" },
    [2] = { "reply", "bool" },
  },
  Error = {
    [1] = { "code", "enum", "ErrorCode" },
    [2] = { "message", "string" },
  },
  Range = {
    [1] = { "offset", "uint64" },
    [2] = { "length", "uint64" },
  },
  Bar = {
    [1] = { "index", "uint32" },
    [2] = { "kind", "enum", "BarKind" },
    [3] = { "prefetchable", "bool" },
    [4] = { "size", "uint64" },
    [5] = { "shadow", "bytes" },
    [6] = { "volatile", "message", "Range" },
    [7] = { "doorbell", "message", "Range" },
  },
  DeviceDescription = {
    [1] = { "model", "string" },
    [2] = { "config", "bytes" },
    [3] = { "config_wmask", "bytes" },
    [4] = { "config_w1cmask", "bytes" },
    [5] = { "bars", "message", "Bar" },
    [6] = { "msix_vectors", "uint32" },
  },
  Attach = {
    [1] = { "dev", "uint32" },
    [2] = { "desc", "message", "DeviceDescription" },
    [3] = { "link_token", "bytes" },
    [4] = { "link_key", "bytes" },
  },
  AttachResult = {
    [1] = { "dev", "uint32" },
    [2] = { "code", "enum", "ErrorCode" },
    [3] = { "message", "string" },
    [4] = { "address", "string" },
    [5] = { "link", "bool" },
  },
  Detach = {
    [1] = { "dev", "uint32" },
    [2] = { "reason", "enum", "ErrorCode" },
    [3] = { "message", "string" },
  },
  FunctionReset = {
    [1] = { "dev", "uint32" },
  },
  StatsRequest = {
    [1] = { "nonce", "uint64" },
  },
  Counter = {
    [1] = { "name", "string" },
    [2] = { "value", "uint64" },
  },
  Stats = {
    [1] = { "nonce", "uint64" },
    [2] = { "counters", "message", "Counter" },
  },
  MmioWrite = {
    [1] = { "dev", "uint32" },
    [2] = { "bar", "uint32" },
    [3] = { "offset", "uint64" },
    [4] = { "data", "bytes" },
  },
  MmioRead = {
    [1] = { "dev", "uint32" },
    [2] = { "tag", "uint32" },
    [3] = { "bar", "uint32" },
    [4] = { "offset", "uint64" },
    [5] = { "size", "uint32" },
  },
  MmioReadCpl = {
    [1] = { "dev", "uint32" },
    [2] = { "tag", "uint32" },
    [3] = { "status", "enum", "ErrorCode" },
    [4] = { "data", "bytes" },
  },
  ConfigWrite = {
    [1] = { "dev", "uint32" },
    [2] = { "offset", "uint32" },
    [3] = { "size", "uint32" },
    [4] = { "value", "uint32" },
  },
  ShadowUpdate = {
    [1] = { "dev", "uint32" },
    [2] = { "bar", "uint32" },
    [3] = { "offset", "uint64" },
    [4] = { "data", "bytes" },
  },
  WritesApplied = {
    [1] = { "dev", "uint32" },
    [2] = { "count", "uint64" },
  },
  DmaRead = {
    [1] = { "dev", "uint32" },
    [2] = { "tag", "uint32" },
    [3] = { "iova", "fixed64" },
    [4] = { "length", "uint32" },
  },
  DmaReadCpl = {
    [1] = { "dev", "uint32" },
    [2] = { "tag", "uint32" },
    [3] = { "status", "enum", "ErrorCode" },
    [4] = { "data", "bytes" },
  },
  DmaWrite = {
    [1] = { "dev", "uint32" },
    [2] = { "iova", "fixed64" },
    [3] = { "data", "bytes" },
  },
  Interrupt = {
    [1] = { "dev", "uint32" },
    [2] = { "vector", "uint32" },
  },
  PushRule = {
    [1] = { "dev", "uint32" },
    [2] = { "id", "uint32" },
    [3] = { "kind", "enum", "PushKind" },
    [4] = { "bar", "uint32" },
    [5] = { "offset", "uint64" },
    [6] = { "ring", "fixed64" },
    [7] = { "avail", "fixed64" },
    [8] = { "entries", "uint32" },
    [9] = { "data_max", "uint32" },
    [10] = { "lba_shift", "uint32" },
    [11] = { "indirect", "bool" },
    [12] = { "shadow", "fixed64" },
  },
  VirtqDone = {
    [1] = { "dev", "uint32" },
    [2] = { "rule", "uint32" },
    [3] = { "interrupt", "bool" },
    [4] = { "vector", "uint32" },
    [5] = { "old_used", "uint32" },
    [6] = { "new_used", "uint32" },
    [7] = { "event_idx", "bool" },
    [8] = { "recheck", "bool" },
    [9] = { "kick", "uint32" },
  },
  Push = {
    [1] = { "dev", "uint32" },
    [2] = { "iova", "fixed64" },
    [3] = { "data", "bytes" },
    [4] = { "rule", "uint32" },
  },
  PushRuleSet = {
    [1] = { "dev", "uint32" },
    [2] = { "id", "uint32" },
  },
  PushDrop = {
    [1] = { "dev", "uint32" },
    [2] = { "iova", "fixed64" },
    [3] = { "length", "uint64" },
  },
}
-- message type -> its field name prefix in display filters (pcinet.<prefix>.<field>)
local PREFIX = { Frame = "frame", Msg = "msg", Hello = "hello", Resume = "resume", KeepAlive = "keep_alive", Error = "error", Range = "range", Bar = "bar", DeviceDescription = "device_description", Attach = "attach", AttachResult = "attach_result", Detach = "detach", FunctionReset = "function_reset", StatsRequest = "stats_request", Counter = "counter", Stats = "stats", MmioWrite = "mmio_write", MmioRead = "mmio_read", MmioReadCpl = "mmio_read_cpl", ConfigWrite = "config_write", ShadowUpdate = "shadow_update", WritesApplied = "writes_applied", DmaRead = "dma_read", DmaReadCpl = "dma_read_cpl", DmaWrite = "dma_write", Interrupt = "interrupt", PushRule = "push_rule", VirtqDone = "virtq_done", Push = "push", PushRuleSet = "push_rule_set", PushDrop = "push_drop" }
-- END SCHEMA

local p = Proto("pcinet", "pcinet message")

local TF_TO_HOST, TF_LINK, TF_TRUNCATED, TF_HOST_SIDE = 1, 2, 4, 8
local HEADER = 12

local hdr = {
  version = ProtoField.uint8("pcinet.version", "Record version"),
  flags = ProtoField.uint8("pcinet.flags", "Flags", base.HEX),
  to_host = ProtoField.bool("pcinet.to_host", "Device to host", 8, nil, TF_TO_HOST),
  link = ProtoField.bool("pcinet.link", "On the kernel link", 8, nil, TF_LINK),
  truncated = ProtoField.bool("pcinet.truncated", "Payload truncated", 8, nil, TF_TRUNCATED),
  host_side = ProtoField.bool("pcinet.host_side", "Recorded by the host-agent", 8, nil, TF_HOST_SIDE),
  dev = ProtoField.uint32("pcinet.dev", "Device"),
  payload_len = ProtoField.uint32("pcinet.payload_len", "Payload length before truncation"),
  kind = ProtoField.string("pcinet.kind", "Message"),
}

-- Fields shown in hex (addresses, offsets, register values).
local HEX = { iova = true, offset = true, ring = true, avail = true, length = true }
local function isHex(tname, name)
  return HEX[name] or (tname == "ConfigWrite" and name == "value")
end

-- FIELDS[message type][field number] = its ProtoField
local FIELDS = {}
local all = {}
for _, f in pairs(hdr) do all[#all + 1] = f end
for tname, fields in pairs(MESSAGES) do
  FIELDS[tname] = {}
  for num, f in pairs(fields) do
    local name, kind, ref = f[1], f[2], f[3]
    local abbr = "pcinet." .. PREFIX[tname] .. "." .. name
    local b = isHex(tname, name) and base.HEX or base.DEC
    local pf
    if kind == "enum" then pf = ProtoField.uint32(abbr, name, base.DEC, ENUMS[ref])
    elseif kind == "bool" then pf = ProtoField.bool(abbr, name)
    elseif kind == "string" then pf = ProtoField.string(abbr, name)
    elseif kind == "bytes" then pf = ProtoField.bytes(abbr, name)
    elseif kind == "message" then pf = ProtoField.none(abbr, name)
    elseif kind == "uint32" then pf = ProtoField.uint32(abbr, name, b)
    else pf = ProtoField.uint64(abbr, name, b) end -- uint64, fixed64
    FIELDS[tname][num] = pf
    all[#all + 1] = pf
  end
end
p.fields = all

-- A protobuf varint at off (before limit): its value (UInt64) and the offset after it.
local function varint(tvb, off, limit)
  local v = UInt64(0)
  local shift = 0
  while off < limit and shift < 64 do
    local b = tvb(off, 1):uint()
    off = off + 1
    v = v + UInt64(b % 128):lshift(shift)
    if b < 128 then return v, off end
    shift = shift + 7
  end
  return nil, off
end

local function hex(v)
  local h = v:tohex():gsub("^0+", "")
  return "0x" .. (h == "" and "0" or h)
end

-- Decodes message type tname in [off, limit) into tree; scalar fields also into info (a list of
-- "name=value" for the Info column) when given. Returns false if the bytes are not protobuf.
local function decode(tvb, off, limit, tname, tree, info, top)
  local fields = MESSAGES[tname] or {}
  while off < limit do
    local kstart = off
    local key
    key, off = varint(tvb, off, limit)
    if not key then
      tree:add_expert_info(PI_MALFORMED, PI_ERROR, "cut field key")
      return false
    end
    local k = key:tonumber()
    local num, wt = math.floor(k / 8), k % 8
    local f = fields[num]
    local pf = FIELDS[tname] and FIELDS[tname][num]
    local name = f and f[1] or ("field " .. num)
    if wt == 0 then
      local v
      v, off = varint(tvb, off, limit)
      if not v then
        tree:add_expert_info(PI_MALFORMED, PI_ERROR, "cut varint")
        return false
      end
      local range = tvb(kstart, off - kstart)
      if pf and f[2] == "bool" then
        tree:add(pf, range, v:tonumber() ~= 0 and 1 or 0)
      elseif pf and (f[2] == "uint32" or f[2] == "enum") then
        tree:add(pf, range, v:tonumber())
      elseif pf then
        tree:add(pf, range, v)
      else
        tree:add(range, name .. ": " .. tostring(v))
      end
      if info and f and f[1] ~= "dev" then
        local shown = isHex(tname, name) and hex(v) or tostring(v)
        if f[2] == "enum" then shown = ENUMS[f[3]][v:tonumber()] or shown end
        info[#info + 1] = name .. "=" .. shown
      end
    elseif wt == 1 then
      if off + 8 > limit then return false end
      if pf then tree:add_le(pf, tvb(off, 8)) else tree:add(tvb(kstart, off + 8 - kstart), name) end
      if info then info[#info + 1] = name .. "=" .. hex(tvb(off, 8):le_uint64()) end
      off = off + 8
    elseif wt == 5 then
      if off + 4 > limit then return false end
      tree:add(tvb(kstart, off + 4 - kstart), name .. ": " .. tvb(off, 4):le_uint())
      off = off + 4
    elseif wt == 2 then
      local len
      len, off = varint(tvb, off, limit)
      if not len then return false end
      len = len:tonumber()
      if off + len > limit then
        tree:add_expert_info(PI_MALFORMED, PI_ERROR, name .. ": " .. len .. " bytes, past the end")
        return false
      end
      local body = len > 0 and tvb(off, len) or tvb(kstart, off - kstart)
      if f and f[2] == "message" then
        if top then
          top.kind = name
          top.type = f[3]
          tree:add(hdr.kind, tvb(kstart, off - kstart), name)
        end
        local sub = tree:add(pf, tvb(kstart, off + len - kstart))
        sub:set_text(name .. ": " .. f[3])
        if not decode(tvb, off, off + len, f[3], sub, top and info or nil) then return false end
      elseif pf and len > 0 then
        tree:add(pf, body)
        if info then
          info[#info + 1] = f[2] == "string" and (name .. "=" .. body:string()) or (name .. "[" .. len .. "]")
        end
      else
        tree:add(body, name .. ": (empty)")
      end
      off = off + len
    else
      tree:add_expert_info(PI_MALFORMED, PI_ERROR, "wire type " .. wt)
      return false
    end
  end
  return true
end

function p.dissector(tvb, pinfo, tree)
  if tvb:len() < HEADER or tvb(0, 1):uint() ~= 1 then return 0 end
  pinfo.cols.protocol = "pcinet"
  local flags = tvb(1, 1):uint()
  local dev = tvb(4, 4):le_uint()
  local t = tree:add(p, tvb(), "pcinet")
  t:add(hdr.version, tvb(0, 1))
  local ft = t:add(hdr.flags, tvb(1, 1))
  ft:add(hdr.to_host, tvb(1, 1))
  ft:add(hdr.link, tvb(1, 1))
  ft:add(hdr.truncated, tvb(1, 1))
  ft:add(hdr.host_side, tvb(1, 1))
  t:add_le(hdr.dev, tvb(4, 4))
  t:add_le(hdr.payload_len, tvb(8, 4))
  local info = {}
  local top = {}
  local ok = decode(tvb, HEADER, tvb:len(), "Msg", t, info, top)
  local toHost = flags % 2 == 1
  local devName = dev > 0 and ("dev" .. dev) or "device"
  pinfo.cols.src = toHost and devName or "host"
  pinfo.cols.dst = toHost and "host" or devName
  local path = math.floor(flags / 2) % 2 == 1 and "link" or "session"
  local cut = math.floor(flags / 4) % 2 == 1 and (" (payload " .. tvb(8, 4):le_uint() .. " bytes, cut)") or ""
  pinfo.cols.info = string.format("%s %s %s%s%s", path, top.type or "?", table.concat(info, " "), cut,
    ok and "" or " [malformed]")
  t:append_text(string.format(", %s, %s %s", top.type or "?", toHost and "device to host" or "host to device", path))
  return tvb:len()
end

local encap = (wtap_encaps and wtap_encaps.USER0) or wtap.USER0
DissectorTable.get("wtap_encap"):add(encap, p)
