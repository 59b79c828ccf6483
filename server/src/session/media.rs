//! Media and conversation items: audio commits, items with text, images and audio,
//! video frames.

use super::*;

impl SessionActor {
    /// Ends the audio turn and adds the audio item. The utterance's last chunks are
    /// left for the engine to encode with the response's prefill (see `audio_tail`).
    pub(super) async fn commit_audio(&mut self, manual: bool) -> Result<(), ProtocolError> {
        if self.audio.as_ref().is_some_and(|a| a.buffered_ms() > 0) {
            // An earlier utterance's tail goes into the turn before this one's audio.
            self.flush_audio_tail().await?;
        }
        let audio = self.audio.as_mut().ok_or_else(no_audio)?;
        let Some(chunks) = audio.commit() else {
            if manual {
                return Err(ProtocolError::new(
                    ErrorCode::BufferEmpty,
                    "the input audio buffer is empty",
                ));
            }
            return Ok(());
        };
        if self.engine.info().transcribes {
            self.encode_chunks(chunks).await?;
        } else {
            let state = self
                .audio_state
                .take()
                .ok_or_else(|| internal("audio stream state missing"))?;
            self.audio_tail = Some((state, chunks));
        }
        self.audio_state = self.engine.info().audio_state.clone();
        let item_id = self.buffer_item_id();
        self.buffer_item_id = None;
        self.turn_audio.append(&mut self.buffer_embeds);
        self.emit(ServerEvent::InputAudioBufferCommitted(
            InputAudioBufferCommitted {
                event_id: new_event_id(),
                previous_item_id: self.last_item_id.clone(),
                item_id: item_id.clone(),
            },
        ));
        let mut item = Item::user(vec![ContentPart::InputAudio {
            audio: None,
            transcript: None,
        }]);
        item.id = Some(item_id.clone());
        self.add_item(item);
        if self.engine.info().transcribes {
            let pcm = std::mem::take(&mut self.buffer_pcm);
            self.transcribe_item(&item_id, pcm).await;
        }
        Ok(())
    }

    /// Reads the current image's text if a response is about to use it and it has not
    /// been read yet; the text is kept for later turns that reuse the frame.
    pub(super) async fn read_image_text(&mut self) -> Result<(), ProtocolError> {
        let Some(ImageText::Unread(image)) = self.image.as_ref().map(|i| i.text.clone()) else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        let job = Job::ReadText { image, reply: tx };
        let text = self.call_engine(job, rx).await?;
        if let Some(state) = self.image.as_mut() {
            state.text = ImageText::Read(text);
        }
        Ok(())
    }

    /// Transcribes a user audio item with the bundle's speech stage, streaming the
    /// transcript as `input_audio_transcription` events. A failure is reported for the
    /// item (`.failed`) and leaves the turn without that transcript.
    pub(super) async fn transcribe_item(&mut self, item_id: &str, pcm: Vec<f32>) {
        let (deltas_tx, mut deltas) = mpsc::channel(256);
        let (tx, mut rx) = oneshot::channel();
        let job = Job::Transcribe {
            pcm,
            deltas: deltas_tx,
            reply: tx,
        };
        let result = match self.engine.submit(job) {
            Err(err) => Err(submit_error(err)),
            Ok(()) => {
                let waited = tokio::time::timeout(ENGINE_TIMEOUT, async {
                    loop {
                        tokio::select! {
                            Some(delta) = deltas.recv() => {
                                self.emit_transcription_delta(item_id, delta)
                            }
                            reply = &mut rx => {
                                // Pieces sent just before the reply still go out first.
                                while let Ok(delta) = deltas.try_recv() {
                                    self.emit_transcription_delta(item_id, delta);
                                }
                                break reply;
                            }
                        }
                    }
                })
                .await;
                match waited {
                    Ok(Ok(Ok(text))) => Ok(text),
                    Ok(Ok(Err(err))) => Err(model_error(err)),
                    Ok(Err(_)) => Err(internal("the engine dropped the transcription")),
                    Err(_) => Err(ProtocolError::new(
                        ErrorCode::Timeout,
                        "the speech stage did not answer in time",
                    )),
                }
            }
        };
        match result {
            Ok(transcript) => {
                self.emit(ServerEvent::TranscriptionCompleted(
                    TranscriptionCompleted {
                        event_id: new_event_id(),
                        item_id: item_id.to_string(),
                        content_index: 0,
                        transcript: transcript.clone(),
                    },
                ));
                if !transcript.trim().is_empty() {
                    self.turn_transcripts.push(transcript);
                }
            }
            Err(err) => {
                metrics().error(err.code);
                self.emit(ServerEvent::TranscriptionFailed(TranscriptionFailed {
                    event_id: new_event_id(),
                    item_id: item_id.to_string(),
                    content_index: 0,
                    error: ErrorDetail::from_protocol_error(&err),
                }));
            }
        }
    }

    fn emit_transcription_delta(&mut self, item_id: &str, delta: String) {
        self.emit(ServerEvent::TranscriptionDelta(TranscriptionDelta {
            event_id: new_event_id(),
            item_id: item_id.to_string(),
            content_index: 0,
            delta,
        }));
    }

    pub(super) fn add_item(&mut self, mut item: Item) {
        let id = item.id.get_or_insert_with(|| new_id("item")).clone();
        item.status = Some(ItemStatus::Completed);
        item.object = Some(mmrt_protocol::item::ItemObject::RealtimeItem);
        let event = ConversationItemEvent {
            event_id: new_event_id(),
            previous_item_id: self.last_item_id.clone(),
            item: item.without_media(),
        };
        self.emit(ServerEvent::ConversationItemAdded(event.clone()));
        self.emit(ServerEvent::ConversationItemDone(ConversationItemEvent {
            event_id: new_event_id(),
            ..event
        }));
        self.last_item_id = Some(id);
        self.items += 1;
    }

    pub(super) async fn create_item(
        &mut self,
        create: ConversationItemCreate,
    ) -> Result<(), ProtocolError> {
        if self.items >= self.session.mmrt.limits.max_items {
            return Err(ProtocolError::new(
                ErrorCode::SessionLimit,
                format!(
                    "a session holds at most {} items",
                    self.session.mmrt.limits.max_items
                ),
            ));
        }
        let item = create.item;
        if item.role != Role::User {
            return Err(ProtocolError::invalid_field(
                "item.role",
                "only user messages can be added",
            ));
        }
        // Decode everything first, so a bad part leaves the turn untouched.
        let mut texts = Vec::new();
        let mut image = None;
        let mut audio_pcm = Vec::new();
        for (i, part) in item.content.iter().enumerate() {
            match part {
                ContentPart::InputText { text } => texts.push(text.clone()),
                ContentPart::InputImage { image_url, .. } => {
                    let url = image_url.as_deref().ok_or_else(|| {
                        ProtocolError::invalid_field(
                            format!("item.content[{i}].image_url"),
                            "missing",
                        )
                    })?;
                    let data = DataUrlImage::parse(url)
                        .map_err(|e| e.with_param(format!("item.content[{i}].image_url")))?;
                    metrics().ingest("image", data.bytes.len());
                    image = Some(self.encode_image(data.format, data.bytes, None).await?);
                }
                ContentPart::InputAudio { audio, .. } => {
                    let bytes = audio.as_ref().ok_or_else(|| {
                        ProtocolError::invalid_field(format!("item.content[{i}].audio"), "missing")
                    })?;
                    audio_pcm.push(bytes.as_bytes().to_vec());
                }
                ContentPart::OutputText { .. } => {
                    return Err(ProtocolError::invalid_field(
                        format!("item.content[{i}].type"),
                        "output_text is for assistant messages",
                    ));
                }
            }
        }
        let mut item = item;
        if create.previous_item_id.is_some() {
            tracing::debug!("previous_item_id is ignored; items are appended");
        }
        let item_id = item.id.clone().unwrap_or_else(|| new_id("item"));
        item.id = Some(item_id.clone());
        let transcribes = self.engine.info().transcribes;
        if !transcribes {
            for pcm in &audio_pcm {
                self.encode_audio_item(pcm, &item_id).await?;
            }
        }
        self.turn_text.extend(texts);
        if let Some((embeds, text)) = image {
            self.image = Some(ImageState {
                embeds,
                text,
                at: Instant::now(),
                fresh: true,
            });
        }
        self.add_item(item);
        // A transcript follows its item, as the realtime API orders them.
        if transcribes {
            for pcm in &audio_pcm {
                self.encode_audio_item(pcm, &item_id).await?;
            }
        }
        Ok(())
    }

    /// Encodes a committed utterance's tail now, when more audio is about to join the
    /// turn after it.
    pub(super) async fn flush_audio_tail(&mut self) -> Result<(), ProtocolError> {
        match self.audio_tail.take() {
            Some((state, chunks)) => self.encode_into_turn(state, chunks).await,
            None => Ok(()),
        }
    }

    /// Encodes chunks in order, carrying the stream state, onto the turn's audio.
    async fn encode_into_turn(
        &mut self,
        mut state: AudioStreamState,
        chunks: Vec<Vec<f32>>,
    ) -> Result<(), ProtocolError> {
        for chunk in chunks {
            let (tx, rx) = oneshot::channel();
            let job = Job::EncodeAudio {
                state,
                chunk,
                reply: tx,
            };
            let (next, embeds) = self.call_engine(job, rx).await?;
            state = next;
            self.turn_audio.extend(embeds);
        }
        Ok(())
    }

    /// Encodes a whole audio clip from an item, apart from the live buffer (or, for a
    /// bundle that transcribes, transcribes it).
    pub(super) async fn encode_audio_item(
        &mut self,
        pcm: &[u8],
        item_id: &str,
    ) -> Result<(), ProtocolError> {
        self.flush_audio_tail().await?;
        let info = self.engine.info().clone();
        let (Some(rate), Some(chunker)) = (info.audio_sample_rate, info.audio_chunker) else {
            return Err(no_audio());
        };
        let mut ingest = AudioIngest::new(self.session.input_rate(), rate, chunker, None)?;
        let limit = self.session.mmrt.limits.max_audio_buffer_ms;
        let mut chunks = ingest.push_pcm16(pcm, limit)?.chunks;
        chunks.extend(ingest.commit().unwrap_or_default());
        if info.transcribes {
            let pcm: Vec<f32> = chunks.into_iter().flatten().collect();
            let item_id = item_id.to_string();
            self.transcribe_item(&item_id, pcm).await;
            return Ok(());
        }
        let state = info
            .audio_state
            .ok_or_else(|| internal("audio stream state missing"))?;
        self.encode_into_turn(state, chunks).await
    }

    pub(super) async fn video_frame_json(
        &mut self,
        frame: InputVideoFrame,
    ) -> Result<(), ProtocolError> {
        let size = frame.width.zip(frame.height);
        self.video_frame(
            frame.format,
            frame.data.into_bytes(),
            size,
            frame.timestamp_ms,
        )
        .await
    }

    pub(super) async fn video_frame(
        &mut self,
        format: ImageFormat,
        bytes: Vec<u8>,
        size: Option<(u32, u32)>,
        timestamp_ms: u64,
    ) -> Result<(), ProtocolError> {
        metrics().ingest("video", bytes.len());
        if let Err(err) = self.frame_rate.take() {
            metrics()
                .frames_dropped
                .with_label_values(&["rate_limited"])
                .inc();
            return Err(err);
        }
        let fps = self.session.mmrt.video.sample_fps;
        if !self.frames.admit(timestamp_ms, fps)? {
            metrics()
                .frames_dropped
                .with_label_values(&["sampled_out"])
                .inc();
            return Ok(());
        }
        let (embeds, text) = self.encode_image(format, bytes, size).await?;
        self.image = Some(ImageState {
            embeds,
            text,
            at: Instant::now(),
            fresh: true,
        });
        Ok(())
    }

    /// Decodes and preprocesses off the async workers, then encodes in the engine: the
    /// image's embeddings, or for a bundle with a reading stage, the decoded image to be
    /// read when a response needs it.
    pub(super) async fn encode_image(
        &mut self,
        format: ImageFormat,
        bytes: Vec<u8>,
        size: Option<(u32, u32)>,
    ) -> Result<(Vec<f32>, ImageText), ProtocolError> {
        let limits = &self.session.mmrt.limits;
        if bytes.len() as u64 > limits.max_image_bytes {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("images are limited to {} bytes", limits.max_image_bytes),
            ));
        }
        let reads = self.engine.info().reads;
        let pre = self.engine.info().image_preprocessor.clone();
        if pre.is_none() && !reads {
            return Err(ProtocolError::new(
                ErrorCode::Unsupported,
                "this bundle takes no images",
            ));
        }
        let max_side = limits.max_image_dimension;
        let decoded = tokio::task::spawn_blocking(move || {
            let image = match format {
                ImageFormat::RawRgb => {
                    let (w, h) = size.ok_or_else(|| {
                        ModelError::InvalidInput("raw RGB frames need width and height".into())
                    })?;
                    mmrt_models::ImagePreprocessor::from_raw_rgb(w, h, bytes)?
                }
                ImageFormat::Jpeg | ImageFormat::Png => {
                    mmrt_models::ImagePreprocessor::decode(&bytes)?
                }
            };
            if image.width() > max_side || image.height() > max_side {
                return Err(ModelError::InvalidInput(format!(
                    "image is {}x{}; the limit is {max_side} pixels a side",
                    image.width(),
                    image.height()
                )));
            }
            Ok(match &pre {
                Some(pre) => Err(pre.preprocess(&image)),
                None => Ok(image),
            })
        })
        .await
        .map_err(|_| internal("image decoding task failed"))?
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidImage, e.to_string()))?;
        match decoded {
            Err(pixels) => {
                let (tx, rx) = oneshot::channel();
                let embeds = self
                    .call_engine(Job::EncodeImage { pixels, reply: tx }, rx)
                    .await?;
                Ok((embeds, ImageText::NotRead))
            }
            Ok(image) => Ok((Vec::new(), ImageText::Unread(Arc::new(image)))),
        }
    }
}
