// The pipeline executor's member functions (see pipeline.h): the per-step tables, message posts,
// compute ops with the overlapped pair, and the planning counts. Included by pipeline.h only.
#pragma once

namespace moetron {

template <class T>
void PipelineExecutor<T>::keys_read(const pipeline::Schedule& s, int rank, const pipeline::Op& op,
                                    std::vector<std::pair<int, int>>& out) {
  using pipeline::OpKind;
  auto fwd = [&](int m, int stage) {
    out.emplace_back(m, stage);
    if (on_rank(s, rank, m, stage - 1)) out.emplace_back(m, stage - 1);  // the turn: input here
  };
  auto bwd = [&](int m, int stage) { out.emplace_back(m, stage); };  // (the turn: a message)
  out.clear();
  switch (op.kind) {
    case OpKind::Forward:
      fwd(op.mb, op.stage);
      break;
    case OpKind::Backward:
    case OpKind::BackwardInput:
      bwd(op.mb, op.stage);
      break;
    case OpKind::ForwardBackward:
      fwd(op.mb, op.stage);
      bwd(op.mb2, op.stage2);
      break;
    default:  // BackwardWeight, and the sends (which copy the state's output or d input)
      out.emplace_back(op.mb, op.stage);
      break;
  }
}

template <class T>
void PipelineExecutor<T>::begin_step(const std::vector<pipeline::Op>& ops) {
  const int K = sched_.microbatches * sched_.stages;
  slot_of_.assign(K, -1), grads_of_.assign(K, -1);
  act_of_.assign(K, -1), grad_of_.assign(K, -1);
  recvs_.clear();
  losses_.assign(K, Losses{});
  loss_reads_.clear();  // any read still in flight (a step that threw) lands before the resize
  loss_reads_.resize(K);
  parts_stride_ = 0;
  for (const Model<T>* c : chunks_) parts_stride_ = std::max(parts_stride_, c->loss_parts_size());
  loss_parts_.resize(static_cast<size_t>(K * parts_stride_));
  forwarded_.assign(K, 0);
  stats_ = ExecStats{};
  cost_sum_.assign(5, 0.0), cost_n_.assign(5, 0);
  last_grad_op_.assign(sched_.stages, -1);
  for (size_t i = 0; i < ops.size(); ++i) {
    const pipeline::Op& op = ops[i];
    const int gs = op.kind == pipeline::OpKind::ForwardBackward ? op.stage2 : op.stage;
    if (op.kind == pipeline::OpKind::Backward || op.kind == pipeline::OpKind::BackwardInput ||
        op.kind == pipeline::OpKind::BackwardWeight || op.kind == pipeline::OpKind::ForwardBackward)
      last_grad_op_[gs] = static_cast<int>(i);
  }
}

template <class T>
void PipelineExecutor<T>::post(const pipeline::Op& op, const Step& st) {
  using pipeline::OpKind;
  const int m = op.mb;
  const int64_t n = st.B * st.S * chunks_[0]->config().hidden_size;
  const size_t bytes = sizeof(T) * n;
  // (micro-batch, producing stage, activation or gradient)
  const int tag = (m * sched_.stages + op.stage) * 2 +
                  (op.kind == OpKind::SendGrad || op.kind == OpKind::RecvGrad);
  auto tr = [&](trace::Track t, const char* name) {  // the message's trace slice (stage: producer)
    return trace::pending(t, name, "mb,stage,peer,bytes", m, op.stage, op.peer,
                          static_cast<int64_t>(bytes));
  };
  switch (op.kind) {
    case OpKind::RecvActivation: {  // the input of (m, s+1)
      int& b = act_of_[key(m, op.stage + 1)];
      b = msg_acquire(n);
      batch_.push_back(P2pOp::recv(msgs_[b].data(), bytes, op.peer, tag));
      recvs_.push_back({nullptr, tr(trace::Track::PpRecv, "recv activation")});
      break;
    }
    case OpKind::SendActivation: {  // the output itself, no copy: the state gives it up
      // (Model::output_buffer; a message buffer's memory goes back to the allocator in its place)
      wait_window();
      const int b = msgs_.take();
      msgs_[b].release();
      std::swap(msgs_[b], chunk(op.stage).output_buffer(state(key(m, op.stage))));
      batch_.push_back(P2pOp::send(msgs_[b].data(), bytes, op.peer, tag));
      sends_.push_back({nullptr, b, tr(trace::Track::PpSend, "send activation")});
      break;
    }
    case OpKind::RecvGrad: {  // d output of (m, s-1)
      int& b = grad_of_[key(m, op.stage - 1)];
      b = msg_acquire(n);
      batch_.push_back(P2pOp::recv(msgs_[b].data(), bytes, op.peer, tag));
      recvs_.push_back({nullptr, tr(trace::Track::PpRecv, "recv gradient")});
      break;
    }
    case OpKind::SendGrad:
      wait_window();
      send_copy(state(key(m, op.stage)).dh.data(), bytes, op.peer, tag, n,
                tr(trace::Track::PpSend, "send gradient"));
      break;
    default:
      throw std::logic_error("pipeline executor: post() of a compute op");
  }
}

template <class T>
Program PipelineExecutor<T>::forward_of(int m, int stage, const Step& st) {
  const int k = key(m, stage);
  slot_of_[k] = slots_.take_for(stage);  // (a state of another stage is emptied first)
  const T* in = nullptr;
  if (stage > 0)
    in = here(m, stage - 1) ? chunk(stage - 1).output(state(key(m, stage - 1)))
                            : msgs_[act_of_[k]].data();
  return chunk(stage).forward_program(state(k), st.tokens(m), st.B, st.S, st.mtp_weight, in);
}

template <class T>
void PipelineExecutor<T>::forward_done(int m, int stage) {
  const int k = key(m, stage);
  forwarded_[k] = 1;
  loss_reads_[k] = chunk(stage).read_losses_start(state(k), &loss_parts_[k * parts_stride_]);
  msg_release(act_of_[k]);
}

template <class T>
void PipelineExecutor<T>::read_losses(const Step& st) {
  for (int k = 0; k < static_cast<int>(losses_.size()); ++k) {
    if (!forwarded_[k]) continue;  // not run here
    loss_reads_[k].wait();
    const int stage = k % sched_.stages;
    losses_[k] =
        chunk(stage).losses_from(&loss_parts_[k * parts_stride_], st.B, st.S, st.mtp_weight);
  }
}

template <class T>
void PipelineExecutor<T>::watch_grads(size_t i, int m, int stage) {
  auto& hook = state(key(m, stage)).on_layer_grads;
  if (opt_.layer_grads_final && last_grad_op_[stage] == static_cast<int>(i))
    hook = opt_.layer_grads_final;
  else
    hook = nullptr;
}

template <class T>
Program PipelineExecutor<T>::backward_of(int m, int stage, const Step& st, bool defer_weight) {
  const int k = key(m, stage);
  lend_grads(k, stage);
  watch_grads(op_index_, m, stage);
  // d output: received, or (the turn) handed over by backward_done of (m, stage + 1)
  const T* dout = stage < sched_.stages - 1 ? msgs_[grad_of_[k]].data() : nullptr;
  return chunk(stage).backward_program(state(k), st.grad_scale, dout, defer_weight);
}

// The d output the backward read goes back to the pool. DualPipeV's turn: d(input) of (m, stage)
// is d(output) of (m, stage - 1) on this rank — it moves into a message buffer, as if received
// (a swap, no copy), so (m, stage)'s slot need not outlive its own ops.
template <class T>
void PipelineExecutor<T>::backward_done(int m, int stage) {
  msg_release(grad_of_[key(m, stage)]);
  if (!here(m, stage - 1)) return;
  int& b = grad_of_[key(m, stage - 1)];
  b = msgs_.take();
  std::swap(msgs_[b], state(key(m, stage)).dh);
}

// The overlapped pair: backward and forward pieces alternately (backward first: DeepSeek-V3's
// combine(B) | attn(F) | mlp(B) | dispatch(F) ...), progress between pieces; with interleave off,
// the forward to its end, then the backward.
template <class T>
void PipelineExecutor<T>::run_pair(Program& f, Program& b) {
  if (!opt_.interleave) {
    while (f.step()) poll();
    while (b.step()) poll();
    return;
  }
  for (bool fl = true, bl = true; fl || bl;) {
    if (bl) {
      const int64_t t0 = trace::stamp();
      bl = b.step();
      trace::span_since(trace::Track::Compute, "B piece", t0, "layer", bl ? b.last().layer : -1);
      if (bl && opt_.on_piece) opt_.on_piece(false, b.last());
      poll();
    }
    if (fl) {
      const int64_t t0 = trace::stamp();
      fl = f.step();
      trace::span_since(trace::Track::Compute, "F piece", t0, "layer", fl ? f.last().layer : -1);
      if (fl && opt_.on_piece) opt_.on_piece(true, f.last());
      poll();
    }
  }
}

template <class T>
void PipelineExecutor<T>::compute(const pipeline::Op& op, const Step& st) {
  using pipeline::OpKind;
  wait_receives();
  const double ep0 = ep_blocked();
  const auto t0 = clock::now();
  const int m = op.mb, s = op.stage;
  int cost = 0;  // F, B, Bi, W, FB
  switch (op.kind) {
    case OpKind::Forward: {
      Program f = forward_of(m, s, st);
      while (f.step()) poll();
      forward_done(m, s);
      break;
    }
    case OpKind::Backward:
    case OpKind::BackwardInput: {
      Program b = backward_of(m, s, st, op.kind == OpKind::BackwardInput);
      while (b.step()) poll();
      backward_done(m, s);
      cost = op.kind == OpKind::Backward ? 1 : 2;
      break;
    }
    case OpKind::BackwardWeight:
      watch_grads(op_index_, m, s);
      chunk(s).backward_weight(state(key(m, s)));
      cost = 3;
      break;
    case OpKind::ForwardBackward: {
      // two programs of one chunk would share its layers' scratch: pairs span two chunks
      if (s == op.stage2) throw std::logic_error("pipeline executor: a pair on one chunk");
      Program f = forward_of(m, s, st);
      Program b = backward_of(op.mb2, op.stage2, st, op.defer_weight);
      run_pair(f, b);
      forward_done(m, s);
      backward_done(op.mb2, op.stage2);
      cost = 4;
      break;
    }
    default:
      throw std::logic_error("pipeline executor: compute() of a message op");
  }
  const double dt = seconds_since(t0), ep = ep_blocked() - ep0;
  static const char* const names[] = {"F", "B", "BI", "W", "F&B"};
  trace::span_since(trace::Track::Compute, names[cost], trace::ns(t0), "mb,stage,mb2,stage2", m, s,
                    op.mb2, op.stage2);
  (op.kind == OpKind::ForwardBackward ? stats_.ep_wait_pair : stats_.ep_wait_single) += ep;
  stats_.compute += dt - ep;
  cost_sum_[cost] += dt, ++cost_n_[cost];
}

template <class T>
void PipelineExecutor<T>::finish_stats() {
  auto mean = [&](int i) { return cost_n_[i] ? cost_sum_[i] / cost_n_[i] : 0.0; };
  stats_.cost_F = mean(0), stats_.cost_B = mean(1), stats_.cost_Bi = mean(2);
  stats_.cost_W = mean(3), stats_.cost_FB = mean(4);
}

// The pools' plan: the keys each op takes, lends and retires (a state from its forward to the
// last op that reads it; a set from its first backward op to the same), what the rest of the
// step needs after each op, and whether trimming to that lowers the most held at once.
template <class T>
typename PipelineExecutor<T>::PoolPlan PipelineExecutor<T>::pool_plan(const pipeline::Schedule& s,
                                                                      int rank) {
  using pipeline::OpKind;
  const std::vector<pipeline::Op>& ops = s.per_rank[rank];
  PoolPlan p;
  p.ops.resize(ops.size());
  std::vector<int> last(static_cast<size_t>(s.microbatches * s.stages), -1);
  std::vector<uint8_t> lent(last.size(), 0);
  std::vector<std::pair<int, int>> ks;
  for (size_t i = 0; i < ops.size(); ++i) {
    const pipeline::Op& op = ops[i];
    if (op.kind == OpKind::RecvActivation || op.kind == OpKind::RecvGrad) continue;
    const bool pair = op.kind == OpKind::ForwardBackward;
    if (op.kind == OpKind::Forward || pair) p.ops[i].take.push_back(op.mb * s.stages + op.stage);
    int bk = -1;
    if (op.kind == OpKind::Backward || op.kind == OpKind::BackwardInput)
      bk = op.mb * s.stages + op.stage;
    if (pair) bk = op.mb2 * s.stages + op.stage2;
    if (bk >= 0 && !lent[bk]) lent[bk] = 1, p.ops[i].lend.push_back(bk);
    keys_read(s, rank, op, ks);
    for (const auto& [m, st] : ks) last[m * s.stages + st] = static_cast<int>(i);
  }
  for (size_t k = 0; k < last.size(); ++k)
    if (last[k] >= 0) p.ops[last[k]].retire.push_back(static_cast<int>(k));
  // live counts during each op; keep_*: their most over the ops after it
  std::vector<int> live_s(ops.size()), live_g(ops.size());
  int ns = 0, ng = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    ns += static_cast<int>(p.ops[i].take.size()), ng += static_cast<int>(p.ops[i].lend.size());
    live_s[i] = ns, live_g[i] = ng;
    p.peak_slots = std::max(p.peak_slots, ns), p.peak_sets = std::max(p.peak_sets, ng);
    for (int k : p.ops[i].retire) ns -= 1, ng -= lent[k];
  }
  for (size_t i = ops.size(); i-- > 1;) {
    p.ops[i - 1].keep_slots = std::max(p.ops[i].keep_slots, live_s[i]);
    p.ops[i - 1].keep_sets = std::max(p.ops[i].keep_sets, live_g[i]);
  }
  p.share = true;
  int shared = 0;
  walk_pools(p,
             [&](const std::vector<int>&, int hs, int hg) { shared = std::max(shared, hs + hg); });
  p.share = shared < p.peak_slots + p.peak_sets;
  p.peak_held = p.share ? shared : p.peak_slots + p.peak_sets;
  return p;
}

// The executor's pools op by op: a pool grows when an op needs more than it holds; shared, it
// trims after each op to the rest of the step's need (from nothing at the step's start); kept,
// it holds its peak from the first step on.
template <class T>
template <class F>
void PipelineExecutor<T>::walk_pools(const PoolPlan& p, F&& visit) {
  std::vector<int> live;
  std::vector<uint8_t> lent;
  int hs = p.share ? 0 : p.peak_slots, hg = p.share ? 0 : p.peak_sets, ng = 0;
  for (const PoolOp& op : p.ops) {
    for (int k : op.take) live.push_back(k);
    for (int k : op.lend) {
      if (lent.size() <= static_cast<size_t>(k)) lent.resize(static_cast<size_t>(k) + 1, 0);
      lent[k] = 1, ++ng;
    }
    hs = std::max(hs, static_cast<int>(live.size())), hg = std::max(hg, ng);
    visit(live, hs, hg);
    for (int k : op.retire) {
      const auto it = std::find(live.begin(), live.end(), k);
      if (it != live.end()) live.erase(it);
      if (static_cast<size_t>(k) < lent.size() && lent[k]) lent[k] = 0, --ng;
    }
    if (p.share) {
      hs = std::max(static_cast<int>(live.size()), std::min(hs, op.keep_slots));
      hg = std::max(ng, std::min(hg, op.keep_sets));
    }
  }
}

template <class T>
int PipelineExecutor<T>::peak_message_buffers(const pipeline::Schedule& s, int rank) {
  using pipeline::OpKind;
  const std::vector<pipeline::Op>& ops = s.per_rank[rank];
  const int n = static_cast<int>(ops.size());
  // the backward half an op runs, if any: (mb, stage)
  auto backward = [](const pipeline::Op& c) -> std::optional<std::pair<int, int>> {
    if (c.kind == OpKind::Backward || c.kind == OpKind::BackwardInput) return {{c.mb, c.stage}};
    if (c.kind == OpKind::ForwardBackward) return {{c.mb2, c.stage2}};
    return std::nullopt;
  };
  auto first_backward = [&](int from, int m, int stage) {  // of (m, stage), from op `from` on
    int j = from;
    while (j < n && backward(ops[j]) != std::pair{m, stage}) ++j;
    return j;
  };
  std::vector<int> delta(n + 1, 0);
  auto hold = [&](int from, int through) { ++delta[from], --delta[std::min(through, n - 1) + 1]; };
  const std::vector<int> sent = pipeline::send_release(s)[rank];
  for (int i = 0; i < n; ++i) {
    const pipeline::Op& op = ops[i];
    if (op.kind == OpKind::SendActivation || op.kind == OpKind::SendGrad) {
      hold(i, sent[i]);  // (a sent activation from its post: before, the state holds it)
    } else if (op.kind == OpKind::RecvActivation) {  // to the forward that reads it
      int j = i + 1;
      while (j < n &&
             !((ops[j].kind == OpKind::Forward || ops[j].kind == OpKind::ForwardBackward) &&
               ops[j].mb == op.mb && ops[j].stage == op.stage + 1))
        ++j;
      hold(i, j);
    } else if (op.kind == OpKind::RecvGrad) {  // to the backward that reads it
      hold(i, first_backward(i + 1, op.mb, op.stage - 1));
    } else {  // DualPipeV's turn (backward_done): d input of (m, s) kept for (m, s - 1) here,
      // in the entry the d output it read gave back just before (none on the last stage)
      if (const auto b = backward(op);
          b && b->second > 0 && s.rank_of(b->first, b->second - 1) == rank)
        hold(b->second == s.stages - 1 ? i : i + 1, first_backward(i + 1, b->first, b->second - 1));
    }
  }
  int open = 0, peak = 0;
  for (int d : delta) peak = std::max(peak, open += d);
  return peak;
}

}  // namespace moetron
