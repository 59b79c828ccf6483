//! Responses: assembling a turn's inputs, starting generation, and turning the
//! engine's events into protocol events.

use super::*;

impl SessionActor {
    pub(super) async fn create_response(
        &mut self,
        create: ResponseCreate,
    ) -> Result<(), ProtocolError> {
        if self.draining {
            return Err(ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down and starts no new responses",
            ));
        }
        if self.response.is_some() {
            return Err(ProtocolError::new(
                ErrorCode::ResponseInProgress,
                "a response is already being generated; cancel it or wait for response.done",
            ));
        }
        let settings = self.session.response_settings(create.response.as_ref())?;

        // What this turn holds, and how each missing modality is filled.
        let mut turn = TurnEmbeddings::default();
        let mut report = Vec::new();
        let mut policies = BTreeMap::new();
        let fill = self.session.mmrt.fill_policy.clone();
        let max_age = Duration::from_millis(self.session.mmrt.max_age_ms);
        let text_prompt = self.engine.info().text_prompt;
        let usable_image = match &self.image {
            Some(image) => {
                image.fresh
                    || (fill.image == FillPolicy::LastKnown && image.at.elapsed() <= max_age)
            }
            None => false,
        };
        if text_prompt && usable_image {
            self.read_image_text().await?;
        }
        if text_prompt {
            // A cascade: every modality arrives as text.
            if !self.turn_text.is_empty() {
                turn.texts.insert(Modality::Text, self.turn_text.join("\n"));
            }
            if !self.turn_transcripts.is_empty() {
                turn.texts
                    .insert(Modality::Audio, self.turn_transcripts.join(" "));
            }
            turn.history = self.history.iter().cloned().collect();
        } else if !self.turn_text.is_empty() {
            let text = self.turn_text.join(" ");
            let (tx, rx) = oneshot::channel();
            let embeds = self
                .call_engine(Job::EmbedText { text, reply: tx }, rx)
                .await?;
            turn.by_modality.insert(Modality::Text, embeds);
        }
        let image_state = match &self.image {
            Some(image) if image.fresh => {
                turn.by_modality
                    .insert(Modality::Image, image.embeds.clone());
                Some((
                    ModalityStatus::Present,
                    None,
                    None,
                    image.text.text().to_string(),
                ))
            }
            Some(image) if fill.image == FillPolicy::LastKnown && image.at.elapsed() <= max_age => {
                turn.by_modality
                    .insert(Modality::Image, image.embeds.clone());
                let age = image.at.elapsed().as_millis() as u64;
                Some((
                    ModalityStatus::Stale,
                    Some(FillPolicy::LastKnown),
                    Some(age),
                    image.text.text().to_string(),
                ))
            }
            _ => None,
        };
        if text_prompt {
            turn.by_modality.remove(&Modality::Image);
            if let Some((_, _, _, text)) = &image_state {
                if !text.trim().is_empty() {
                    turn.texts.insert(Modality::Image, text.clone());
                }
            }
        }
        if !self.turn_audio.is_empty() {
            // Copied, not taken: if the engine refuses the job the turn stays intact.
            turn.by_modality
                .insert(Modality::Audio, self.turn_audio.clone());
        }
        policies.insert(Modality::Image, to_model_fill(fill.image));
        policies.insert(Modality::Audio, to_model_fill(fill.audio));
        policies.insert(Modality::Text, ModelFill::Null);
        // What the user said this turn, as the history will remember it.
        let user_text = [Modality::Image, Modality::Audio, Modality::Text]
            .iter()
            .filter_map(|m| turn.texts.get(m))
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");

        let cancel = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = mpsc::channel(256);
        let request = GenerateRequest {
            // Cloned: if the engine refuses the job, the turn stays intact.
            audio_tail: self.audio_tail.clone(),
            turn,
            policies,
            sampling: SamplingParams {
                temperature: settings.temperature,
                top_k: 0,
                top_p: 1.0,
                seed: rand_seed(),
            },
            max_new_tokens: settings.max_output_tokens as usize,
            cancel: cancel.clone(),
            events: events_tx,
        };
        self.engine
            .submit(Job::Generate(request))
            .map_err(submit_error)?;

        // The turn is consumed.
        self.turn_text.clear();
        self.turn_audio.clear();
        self.audio_tail = None;
        self.turn_transcripts.clear();
        if let Some(image) = self.image.as_mut() {
            image.fresh = false;
        }
        if let Some((status, fill, age, _)) = image_state {
            report.push(ModalityState {
                modality: InputModality::Image,
                status,
                fill,
                age_ms: age,
            });
        }

        let id = new_id("resp");
        let item_id = new_id("item");
        let span =
            tracing::info_span!("response", session_id = %self.session.id, response_id = %id);
        span.in_scope(|| {
            tracing::debug!(
                max_output_tokens = settings.max_output_tokens,
                temperature = settings.temperature,
                "response requested"
            )
        });
        self.emit(ServerEvent::ResponseCreated(ResponseEvent {
            event_id: new_event_id(),
            response: Response::in_progress(id.clone(), settings.max_output_tokens),
        }));
        self.emit(ServerEvent::OutputItemAdded(OutputItemEvent {
            event_id: new_event_id(),
            response_id: id.clone(),
            output_index: 0,
            item: Item::assistant(item_id.clone(), ItemStatus::InProgress, None),
        }));
        self.emit(ServerEvent::ContentPartAdded(ContentPartEvent {
            event_id: new_event_id(),
            response_id: id.clone(),
            item_id: item_id.clone(),
            output_index: 0,
            content_index: 0,
            part: ContentPart::OutputText {
                text: String::new(),
            },
        }));
        self.response = Some(ActiveResponse {
            id,
            item_id,
            cancel,
            events: events_rx,
            text: String::new(),
            input_tokens: 0,
            report,
            max_output_tokens: settings.max_output_tokens,
            reason: None,
            requested_at: Instant::now(),
            last_delta_at: None,
            span,
            user_text,
        });
        Ok(())
    }

    pub(super) fn on_generation(&mut self, event: Option<GenerationEvent>) {
        let Some(response) = self.response.as_mut() else {
            return;
        };
        let event = event.unwrap_or(GenerationEvent::Failed(ModelError::Inference {
            model: "engine".into(),
            message: "the engine stopped".into(),
        }));
        match event {
            GenerationEvent::Started {
                report,
                input_tokens,
                prefill,
            } => {
                response.input_tokens = input_tokens;
                response
                    .span
                    .in_scope(|| tracing::debug!(?prefill, input_tokens, "prefilled"));
                merge_report(&mut response.report, &report);
                let event = ServerEvent::ModalityReport(ModalityReportEvent {
                    event_id: new_event_id(),
                    response_id: response.id.clone(),
                    modalities: response.report.clone(),
                });
                self.emit(event);
            }
            GenerationEvent::Delta(delta) => {
                let now = Instant::now();
                match response.last_delta_at {
                    None => metrics()
                        .first_token_seconds
                        .observe((now - response.requested_at).as_secs_f64()),
                    Some(last) => metrics()
                        .inter_token_seconds
                        .observe((now - last).as_secs_f64()),
                }
                response.last_delta_at = Some(now);
                response.text.push_str(&delta);
                let event = ServerEvent::OutputTextDelta(OutputTextDelta {
                    event_id: new_event_id(),
                    response_id: response.id.clone(),
                    item_id: response.item_id.clone(),
                    output_index: 0,
                    content_index: 0,
                    delta,
                });
                self.emit(event);
            }
            GenerationEvent::Finished {
                reason,
                output_tokens,
            } => {
                let (status, details) = match reason {
                    FinishReason::Length => (
                        ResponseStatus::Incomplete,
                        Some(StatusDetails {
                            kind: ResponseStatus::Incomplete,
                            reason: Some(StatusReason::MaxOutputTokens),
                            error: None,
                        }),
                    ),
                    FinishReason::Eos | FinishReason::Stop => (ResponseStatus::Completed, None),
                };
                self.finish_response(status, details, output_tokens);
            }
            GenerationEvent::Cancelled { output_tokens } => {
                let reason = response.reason.unwrap_or(StatusReason::ClientCancelled);
                let details = StatusDetails {
                    kind: ResponseStatus::Cancelled,
                    reason: Some(reason),
                    error: None,
                };
                self.finish_response(ResponseStatus::Cancelled, Some(details), output_tokens);
            }
            GenerationEvent::Failed(err) => {
                let err = model_error(err);
                let details = StatusDetails {
                    kind: ResponseStatus::Failed,
                    reason: None,
                    error: Some(mmrt_protocol::response::ResponseError {
                        kind: err.code.error_type(),
                        code: err.code,
                        message: Some(err.message.clone()),
                    }),
                };
                self.emit_error(err);
                self.finish_response(ResponseStatus::Failed, Some(details), 0);
            }
        }
    }

    pub(super) fn finish_response(
        &mut self,
        status: ResponseStatus,
        details: Option<StatusDetails>,
        output_tokens: usize,
    ) {
        let Some(response) = self.response.take() else {
            return;
        };
        response.span.in_scope(|| {
            tracing::debug!(
                status = ?status,
                input_tokens = response.input_tokens,
                output_tokens,
                took = ?response.requested_at.elapsed(),
                "response done"
            )
        });
        let item_status = if status == ResponseStatus::Completed {
            ItemStatus::Completed
        } else {
            ItemStatus::Incomplete
        };
        let text = response.text.clone();
        let ids = (response.id.clone(), response.item_id.clone());
        // The exchange joins the history the next prompts are written with.
        if self.engine.info().text_prompt
            && status != ResponseStatus::Failed
            && !(response.user_text.is_empty() && text.is_empty())
        {
            // Only what the prompt can hold is kept.
            let max = self.engine.info().max_history_turns;
            self.history
                .push_back((response.user_text.clone(), text.clone()));
            while self.history.len() > max {
                self.history.pop_front();
            }
        }
        self.emit(ServerEvent::OutputTextDone(OutputTextDone {
            event_id: new_event_id(),
            response_id: ids.0.clone(),
            item_id: ids.1.clone(),
            output_index: 0,
            content_index: 0,
            text: text.clone(),
        }));
        self.emit(ServerEvent::ContentPartDone(ContentPartEvent {
            event_id: new_event_id(),
            response_id: ids.0.clone(),
            item_id: ids.1.clone(),
            output_index: 0,
            content_index: 0,
            part: ContentPart::OutputText { text: text.clone() },
        }));
        let item = Item::assistant(ids.1.clone(), item_status, Some(text));
        self.emit(ServerEvent::OutputItemDone(OutputItemEvent {
            event_id: new_event_id(),
            response_id: ids.0.clone(),
            output_index: 0,
            item: item.clone(),
        }));
        let mut done = Response::in_progress(ids.0, response.max_output_tokens);
        done.status = status;
        done.status_details = details;
        done.output = vec![item];
        done.usage = Some(Usage::new(
            response.input_tokens as u32,
            output_tokens as u32,
        ));
        done.mmrt = Some(ResponseExt {
            modality_report: response.report,
        });
        self.emit(ServerEvent::ResponseDone(ResponseEvent {
            event_id: new_event_id(),
            response: done,
        }));
        self.last_item_id = Some(ids.1);
    }
}

/// Waits for the active response's next event, or forever when there is none.
pub(super) async fn next_generation_event(
    response: &mut Option<ActiveResponse>,
) -> Option<GenerationEvent> {
    match response {
        Some(r) => r.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Adds the engine's account of the slots to what the session already knew.
pub(super) fn merge_report(
    report: &mut Vec<ModalityState>,
    slots: &BTreeMap<Modality, SlotOutcome>,
) {
    for (modality, outcome) in slots {
        let modality = match modality {
            Modality::Text => InputModality::Text,
            Modality::Image => InputModality::Image,
            Modality::Audio => InputModality::Audio,
        };
        if report.iter().any(|s| s.modality == modality) {
            continue;
        }
        let (status, fill) = match outcome {
            SlotOutcome::Present => (ModalityStatus::Present, None),
            SlotOutcome::FilledByCompletion => {
                (ModalityStatus::Filled, Some(FillPolicy::Completion))
            }
            SlotOutcome::FilledByNull => (ModalityStatus::Filled, Some(FillPolicy::Null)),
            SlotOutcome::Omitted => (ModalityStatus::Missing, Some(FillPolicy::Omit)),
        };
        report.push(ModalityState {
            modality,
            status,
            fill,
            age_ms: None,
        });
    }
}

pub(super) fn to_model_fill(policy: FillPolicy) -> ModelFill {
    match policy {
        FillPolicy::Completion => ModelFill::Completion,
        // A last known value too old to use falls back to the null embedding.
        FillPolicy::LastKnown | FillPolicy::Null => ModelFill::Null,
        FillPolicy::Omit => ModelFill::Omit,
    }
}

pub(super) fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
